# Offline stand-in for ansible-test's get-pip bootstrap: install the pip bundled
# with this Python (ensurepip), then let it install the requested packages.
# get-pip's own --no-setuptools/--no-wheel flags are not pip options, and
# ensurepip leaves PIP_CONFIG_FILE=/dev/null behind, hiding the pip config.
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=False)
os.environ.pop("PIP_CONFIG_FILE", None)
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))

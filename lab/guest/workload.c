/*
 * strata-workload: the memory and disk workload the lab guest runs under /init.
 *
 * Usage: [STRATA_DISK_DEVICE=PATH] strata-workload SPEC
 *
 * SPEC is a comma-separated list of parts (each kind at most once):
 *   idle               heartbeat only
 *   stale:N            fill N MiB with non-zero data, then free it: memory the guest
 *                      used and gave back, whose contents Linux keeps
 *   hot:TOTAL:HOT:RATE[:fresh]
 *                      keep a TOTAL MiB working set and rewrite its first HOT MiB
 *                      at RATE 4 KiB pages per second (0 = as fast as possible): one
 *                      word per page, or with "fresh" the whole page with new
 *                      pseudo-random data, which delta compression (XBZRLE) cannot shrink
 *   disk:MIB:RATE      write the first MIB MiB (1..4096) of /dev/vda (or PATH) as 4 KiB
 *                      blocks, round-robin, at RATE blocks per second (1..10000), with
 *                      O_DIRECT|O_DSYNC; at each heartbeat read back every block written
 *                      in this boot and check it is intact and the last one written there
 *
 * Each disk block holds little-endian u64s: magic "STRATADK", boot id, write seq, block
 * index, pseudo-random payload, and an FNV-1a 64 checksum of the rest in its last 8 bytes.
 *
 * stdout (the serial console) gets one "ready" line once setup is done, then a
 * heartbeat every 5 s; pages_written counts hot-page rewrites since start. With a disk
 * part the heartbeat also gives completed block writes, full read-back passes and the
 * bad blocks and failed I/Os seen so far, and each problem gets a line of its own:
 *   strata-workload: ready spec=<SPEC> boot=<id>
 *   strata-workload: alive boot=<id> seq=<n> pages_written=<total>
 *                    [disk_writes=<W> disk_checks=<C> disk_errors=<E>]
 *   strata-workload: disk error block=<i> want_seq=<s> found_seq=<s>
 *                    reason=<magic|checksum|boot|index|lost|seq>
 *   strata-workload: disk io error op=<write|read> block=<i> errno=<name|number|short>
 * Disk problems never stop the program: the test reads the counters.
 *
 * Exit status: 2 for a bad SPEC, 1 when memory cannot be mapped or the disk not opened.
 *
 * Build: gcc -static -O2 -o strata-workload workload.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WL_PAGE 4096u
#define WL_MIB (1024u * 1024u)
/* 1 TiB and 100M pages/s: far beyond any lab guest, and keeps all arithmetic in range. */
#define MAX_MIB (UINT64_C(1) << 20)
#define MAX_RATE UINT64_C(100000000)
#define NS_PER_S INT64_C(1000000000)
#define TICK_NS (10 * INT64_C(1000000))
#define HEARTBEAT_NS (5 * NS_PER_S)
/* After a stall (a paused or throttled VM) catch up at most 100 ms of writes, not a burst. */
#define MAX_BACKLOG_S 0.1
/* With RATE 0, look at the clock every this many pages. */
#define FAST_BURST_PAGES 1024u
#define MAX_FIELDS 5

#define DISK_DEFAULT_DEVICE "/dev/vda"
#define DISK_BLOCK 4096u
#define DISK_MAX_MIB UINT64_C(4096)
#define DISK_MAX_RATE UINT64_C(10000)
/* "STRATADK" when stored little-endian. */
#define DISK_MAGIC UINT64_C(0x4b44415441525453)
#define DISK_CHECKSUM_OFFSET (DISK_BLOCK - 8u)
#define DISK_PAYLOAD_OFFSET 32u
/* Read-back chunk: few syscalls per pass, small enough for a 256 MiB guest. */
#define DISK_READ_CHUNK (256u * 1024u)
/* virtio_blk creates its device node asynchronously after the module loads. */
#define DISK_OPEN_TIMEOUT_NS (10 * NS_PER_S)
#define DISK_OPEN_RETRY_NS (100 * INT64_C(1000000))
/* Per pass (block lines) and per heartbeat (I/O lines): a broken disk must not flood the console. */
#define DISK_MAX_DETAIL_LINES 5u

struct spec {
    bool idle;
    bool stale;
    uint64_t stale_mib;
    bool hot;
    uint64_t hot_total_mib;
    uint64_t hot_mib;
    uint64_t hot_rate;
    bool hot_fresh;
    bool disk;
    uint64_t disk_mib;
    uint64_t disk_rate;
};

struct hot_set {
    uint8_t *base;
    uint64_t pages;  /* pages in the rewritten (hot) part */
    uint64_t cursor; /* next page to rewrite */
    uint64_t written;
    bool fresh;      /* rewrite whole pages with new data */
    uint64_t prng;
};

/* Writes earn credit with elapsed time; a stall earns at most MAX_BACKLOG_S of it. */
struct pacer {
    double rate_per_s;
    double credit;
    double max_credit;
};

struct disk_set {
    int fd;
    uint64_t boot_id;
    uint64_t blocks;         /* N: blocks in the written area */
    uint64_t writes;         /* W: completed writes; also the seq of the next write */
    uint64_t checks;         /* full read-back passes */
    uint64_t errors;         /* bad blocks found plus failed reads and writes */
    unsigned io_error_lines; /* I/O error lines printed since the last heartbeat */
    uint8_t *write_buf;
    uint8_t *read_buf;
};

static const char *spec_text;

static void die_spec(const char *why, const char *part)
{
    fprintf(stderr, "strata-workload: invalid spec '%s': %s%s%s\n", spec_text, why,
            part ? ": " : "", part ? part : "");
    exit(2);
}

/* Strict decimal: digits only (strtoull would take signs, spaces and hex), bounded by max. */
static bool parse_uint(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static uint64_t field_uint(const char *field, uint64_t min, uint64_t max, const char *part,
                           const char *name)
{
    uint64_t v;
    if (!parse_uint(field, max, &v) || v < min) {
        char why[96];
        snprintf(why, sizeof why, "%s must be an integer in %" PRIu64 "..%" PRIu64, name, min,
                 max);
        die_spec(why, part);
    }
    return v;
}

static struct spec parse_spec(const char *text)
{
    struct spec sp = {0};
    char *copy = strdup(text);
    if (copy == NULL) {
        perror("strata-workload: strdup");
        exit(1);
    }
    char *rest = copy;
    char *part;
    /* strsep (unlike strtok) yields empty parts, so "a,,b" and a trailing comma are caught. */
    while ((part = strsep(&rest, ",")) != NULL) {
        char partcopy[64];
        snprintf(partcopy, sizeof partcopy, "%s", part);
        char *fields[MAX_FIELDS];
        size_t n = 0;
        char *fp = part;
        char *f;
        while ((f = strsep(&fp, ":")) != NULL) {
            if (n == MAX_FIELDS)
                die_spec("too many ':' fields", partcopy);
            fields[n++] = f;
        }
        if (strcmp(fields[0], "idle") == 0) {
            if (n != 1)
                die_spec("idle takes no arguments", partcopy);
            if (sp.idle)
                die_spec("idle given twice", NULL);
            sp.idle = true;
        } else if (strcmp(fields[0], "stale") == 0) {
            if (n != 2)
                die_spec("expected stale:N", partcopy);
            if (sp.stale)
                die_spec("stale given twice", NULL);
            sp.stale = true;
            sp.stale_mib = field_uint(fields[1], 1, MAX_MIB, partcopy, "N (MiB)");
        } else if (strcmp(fields[0], "hot") == 0) {
            if (n != 4 && !(n == 5 && strcmp(fields[4], "fresh") == 0))
                die_spec("expected hot:TOTAL:HOT:RATE or hot:TOTAL:HOT:RATE:fresh", partcopy);
            if (sp.hot)
                die_spec("hot given twice", NULL);
            sp.hot = true;
            sp.hot_total_mib = field_uint(fields[1], 1, MAX_MIB, partcopy, "TOTAL (MiB)");
            sp.hot_mib = field_uint(fields[2], 1, sp.hot_total_mib, partcopy, "HOT (MiB, <= TOTAL)");
            sp.hot_rate = field_uint(fields[3], 0, MAX_RATE, partcopy, "RATE (pages/s)");
            sp.hot_fresh = n == 5;
        } else if (strcmp(fields[0], "disk") == 0) {
            if (n != 3)
                die_spec("expected disk:MIB:RATE", partcopy);
            if (sp.disk)
                die_spec("disk given twice", NULL);
            sp.disk = true;
            sp.disk_mib = field_uint(fields[1], 1, DISK_MAX_MIB, partcopy, "MIB (MiB of the disk)");
            sp.disk_rate = field_uint(fields[2], 1, DISK_MAX_RATE, partcopy, "RATE (blocks/s)");
        } else {
            die_spec(*part ? "unknown part" : "empty part", *part ? partcopy : NULL);
        }
    }
    free(copy);
    return sp;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static void sleep_until(int64_t deadline_ns)
{
    struct timespec ts = {.tv_sec = deadline_ns / NS_PER_S, .tv_nsec = deadline_ns % NS_PER_S};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static uint64_t make_boot_id(void)
{
    uint64_t v = 0;
    /* GRND_INSECURE never blocks, even before the guest's entropy pool is ready. */
    if (getrandom(&v, sizeof v, GRND_INSECURE) != (ssize_t)sizeof v || v == 0) {
        /* Kernels before 5.6 reject GRND_INSECURE; time and pid still tag a boot. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 48) ^ 1;
    }
    return v;
}

static uint8_t *map_mib(uint64_t mib, const char *what)
{
    size_t len = (size_t)mib * WL_MIB;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "strata-workload: cannot map %" PRIu64 " MiB for %s: %s\n", mib, what,
                strerror(errno));
        exit(1);
    }
    return p;
}

/* Pseudo-random, never-zero words: every page is really dirty and no two pages are alike. */
static void fill_nonzero(uint8_t *p, uint64_t mib, uint64_t *state)
{
    uint64_t *w = (uint64_t *)p;
    size_t words = (size_t)mib * (WL_MIB / sizeof *w);
    uint64_t x = *state;
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w[i] = x;
    }
    *state = x;
}

/* One changing word per page is enough for QEMU to see the page dirty and its content new;
 * a fresh page differs from its last copy in every word, as a database buffer or a
 * compression job's output does. */
static void rewrite_pages(struct hot_set *hs, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        volatile uint64_t *word = (volatile uint64_t *)(hs->base + hs->cursor * WL_PAGE);
        if (hs->fresh) {
            uint64_t x = hs->prng;
            for (size_t w = 0; w < WL_PAGE / sizeof x; w++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word[w] = x;
            }
            hs->prng = x;
        }
        *word = ++hs->written;
        if (++hs->cursor == hs->pages)
            hs->cursor = 0;
    }
}

static struct pacer pacer_new(uint64_t rate_per_s)
{
    return (struct pacer){.rate_per_s = (double)rate_per_s,
                          .max_credit = (double)rate_per_s * MAX_BACKLOG_S + 1.0};
}

static uint64_t pacer_due(struct pacer *p, int64_t elapsed_ns)
{
    p->credit += p->rate_per_s * (double)elapsed_ns / (double)NS_PER_S;
    if (p->credit > p->max_credit)
        p->credit = p->max_credit;
    uint64_t due = (uint64_t)p->credit;
    p->credit -= (double)due;
    return due;
}

/* Byte by byte, so the block format does not depend on the guest's endianness. */
static void put_le64(uint8_t *p, uint64_t v)
{
    for (unsigned i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint64_t fnv1a64(const uint8_t *p, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

static void disk_fill_block(uint8_t *block, uint64_t boot_id, uint64_t seq, uint64_t index)
{
    put_le64(block + 0, DISK_MAGIC);
    put_le64(block + 8, boot_id);
    put_le64(block + 16, seq);
    put_le64(block + 24, index);
    /* A payload unique to each write makes a torn block (half old, half new) fail its checksum. */
    uint64_t x = boot_id ^ (seq * UINT64_C(0x9e3779b97f4a7c15));
    if (x == 0)
        x = 1; /* xorshift stays at zero forever from a zero seed */
    for (unsigned off = DISK_PAYLOAD_OFFSET; off < DISK_CHECKSUM_OFFSET; off += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        put_le64(block + off, x);
    }
    put_le64(block + DISK_CHECKSUM_OFFSET, fnv1a64(block, DISK_CHECKSUM_OFFSET));
}

/* Names for the errors a failing virtual disk gives; others print as numbers. */
static void errno_text(int err, char *out, size_t size)
{
    static const struct {
        int err;
        const char *name;
    } names[] = {
        {EIO, "EIO"},       {ENOSPC, "ENOSPC"}, {EINVAL, "EINVAL"}, {ENXIO, "ENXIO"},
        {ENODEV, "ENODEV"}, {EROFS, "EROFS"},   {EAGAIN, "EAGAIN"}, {EBADF, "EBADF"},
        {EFAULT, "EFAULT"}, {ENOMEM, "ENOMEM"}, {ETIMEDOUT, "ETIMEDOUT"}, {EPERM, "EPERM"},
        {EACCES, "EACCES"}, {EDQUOT, "EDQUOT"}, {EFBIG, "EFBIG"},
    };
    if (err == 0) {
        snprintf(out, size, "short"); /* a transfer that moved fewer bytes than asked */
        return;
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (names[i].err == err) {
            snprintf(out, size, "%s", names[i].name);
            return;
        }
    }
    snprintf(out, size, "%d", err);
}

/* True when all len bytes moved; else *err is the errno, or 0 for a short transfer. */
static bool disk_io(struct disk_set *ds, bool write, uint8_t *buf, size_t len, uint64_t block,
                    int *err)
{
    off_t offset = (off_t)(block * DISK_BLOCK);
    ssize_t moved;
    do {
        moved = write ? pwrite(ds->fd, buf, len, offset) : pread(ds->fd, buf, len, offset);
    } while (moved < 0 && errno == EINTR);
    *err = moved < 0 ? errno : 0;
    return moved == (ssize_t)len;
}

static void disk_io_failed(struct disk_set *ds, bool write, uint64_t block, int err)
{
    ds->errors++;
    if (ds->io_error_lines >= DISK_MAX_DETAIL_LINES)
        return;
    ds->io_error_lines++;
    char name[16];
    errno_text(err, name, sizeof name);
    printf("strata-workload: disk io error op=%s block=%" PRIu64 " errno=%s\n",
           write ? "write" : "read", block, name);
    fflush(stdout);
}

static uint8_t *disk_buffer(size_t len)
{
    void *p;
    /* O_DIRECT needs buffers aligned to the device's logical block. */
    int err = posix_memalign(&p, DISK_BLOCK, len);
    if (err != 0) {
        fprintf(stderr, "strata-workload: cannot allocate %zu bytes for disk I/O: %s\n", len,
                strerror(err));
        exit(1);
    }
    memset(p, 0, len);
    return p;
}

static struct disk_set disk_open(uint64_t mib, uint64_t boot_id)
{
    struct disk_set ds = {.boot_id = boot_id, .blocks = mib * (WL_MIB / DISK_BLOCK)};
    const char *override = getenv("STRATA_DISK_DEVICE");
    const char *path = override && *override ? override : DISK_DEFAULT_DEVICE;

    /* O_DSYNC: a completed write is on the disk, not in the guest's page cache. */
    int64_t deadline_ns = now_ns() + DISK_OPEN_TIMEOUT_NS;
    for (;;) {
        ds.fd = open(path, O_RDWR | O_DIRECT | O_DSYNC | O_CLOEXEC);
        if (ds.fd >= 0)
            break;
        int err = errno;
        bool may_appear = err == ENOENT || err == ENXIO || err == ENODEV;
        if (!may_appear || now_ns() >= deadline_ns) {
            fprintf(stderr, "strata-workload: cannot open disk %s%s: %s%s\n", path,
                    override ? " (from STRATA_DISK_DEVICE)" : "", strerror(err),
                    may_appear ? " (waited 10 s for it to appear)" : "");
            exit(1);
        }
        sleep_until(now_ns() + DISK_OPEN_RETRY_NS);
    }

    /* A regular file grows as it is written; a device too small would fail every write. */
    struct stat st;
    if (fstat(ds.fd, &st) == 0 && S_ISBLK(st.st_mode)) {
        off_t size = lseek(ds.fd, 0, SEEK_END);
        if (size >= 0 && (uint64_t)size < mib * WL_MIB) {
            fprintf(stderr,
                    "strata-workload: disk %s has %" PRIu64 " MiB, the spec writes %" PRIu64
                    " MiB\n",
                    path, (uint64_t)size / WL_MIB, mib);
            exit(1);
        }
    }

    ds.write_buf = disk_buffer(DISK_BLOCK);
    ds.read_buf = disk_buffer(DISK_READ_CHUNK);
    return ds;
}

/* Write number seq goes to block seq % N. A failed write is retried with the same seq, so
 * writes stays the count of completed writes; the rest of this tick's share is dropped
 * rather than hammering a failing disk. */
static void disk_write_blocks(struct disk_set *ds, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        uint64_t seq = ds->writes;
        uint64_t block = seq % ds->blocks;
        disk_fill_block(ds->write_buf, ds->boot_id, seq, block);
        int err;
        if (!disk_io(ds, true, ds->write_buf, DISK_BLOCK, block, &err)) {
            disk_io_failed(ds, true, block, err);
            return;
        }
        ds->writes++;
    }
}

/* The reason a read-back block is bad, or NULL when it is the last write made to it. */
static const char *disk_block_fault(const struct disk_set *ds, const uint8_t *block,
                                    uint64_t index, uint64_t want_seq)
{
    if (get_le64(block + 0) != DISK_MAGIC)
        return "magic";
    if (get_le64(block + DISK_CHECKSUM_OFFSET) != fnv1a64(block, DISK_CHECKSUM_OFFSET))
        return "checksum";
    if (get_le64(block + 8) != ds->boot_id)
        return "boot";
    if (get_le64(block + 24) != index)
        return "index";
    uint64_t found_seq = get_le64(block + 16);
    if (found_seq < want_seq)
        return "lost";
    if (found_seq > want_seq)
        return "seq"; /* newer than any completed write: should be impossible */
    return NULL;
}

/* Read back every block written in this boot and check it holds its last completed write. */
static void disk_verify(struct disk_set *ds)
{
    uint64_t blocks = ds->blocks;
    uint64_t writes = ds->writes;
    uint64_t written_blocks = writes < blocks ? writes : blocks;
    if (written_blocks == 0)
        return;
    const uint64_t chunk_blocks = DISK_READ_CHUNK / DISK_BLOCK;
    unsigned detail_lines = 0;
    for (uint64_t first = 0; first < written_blocks; first += chunk_blocks) {
        uint64_t count = written_blocks - first < chunk_blocks ? written_blocks - first
                                                               : chunk_blocks;
        int err;
        if (!disk_io(ds, false, ds->read_buf, (size_t)(count * DISK_BLOCK), first, &err)) {
            disk_io_failed(ds, false, first, err);
            continue;
        }
        for (uint64_t j = 0; j < count; j++) {
            uint64_t i = first + j;
            const uint8_t *block = ds->read_buf + j * DISK_BLOCK;
            /* The last write to block i is the largest seq below writes that is i mod blocks. */
            uint64_t want_seq = i + blocks * ((writes - 1 - i) / blocks);
            const char *reason = disk_block_fault(ds, block, i, want_seq);
            if (reason == NULL)
                continue;
            ds->errors++;
            if (detail_lines < DISK_MAX_DETAIL_LINES) {
                detail_lines++;
                printf("strata-workload: disk error block=%" PRIu64 " want_seq=%" PRIu64
                       " found_seq=%" PRIu64 " reason=%s\n",
                       i, want_seq, get_le64(block + 16), reason);
            }
        }
    }
    ds->checks++;
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: [STRATA_DISK_DEVICE=PATH] strata-workload SPEC   (SPEC: idle | "
                        "stale:N | hot:TOTAL:HOT:RATE[:fresh] | disk:MIB:RATE, comma-separated)\n");
        return 2;
    }
    spec_text = argv[1];
    struct spec sp = parse_spec(spec_text);

    uint64_t boot_id = make_boot_id();
    char boot[17];
    snprintf(boot, sizeof boot, "%016" PRIx64, boot_id);
    uint64_t prng = boot_id | 1;

    struct disk_set ds = {0};
    if (sp.disk)
        ds = disk_open(sp.disk_mib, boot_id);

    /* The hot set is mapped before the stale memory is freed, so it cannot reuse those pages. */
    struct hot_set hs = {0};
    if (sp.hot) {
        hs.base = map_mib(sp.hot_total_mib, "hot set");
        fill_nonzero(hs.base, sp.hot_total_mib, &prng);
        hs.pages = sp.hot_mib * (WL_MIB / WL_PAGE);
        hs.fresh = sp.hot_fresh;
        hs.prng = prng | 1;
    }
    if (sp.stale) {
        uint8_t *stale = map_mib(sp.stale_mib, "stale memory");
        fill_nonzero(stale, sp.stale_mib, &prng);
        munmap(stale, (size_t)sp.stale_mib * WL_MIB);
    }

    printf("strata-workload: ready spec=%s boot=%s\n", spec_text, boot);
    fflush(stdout);

    int64_t last = now_ns();
    int64_t next_tick = last + TICK_NS;
    int64_t next_beat = last + HEARTBEAT_NS;
    /* Only paced writers need the tick; idle and stale sleep from heartbeat to heartbeat. */
    bool hot_paced = sp.hot && sp.hot_rate > 0;
    bool ticking = hot_paced || sp.disk;
    struct pacer hot_pace = pacer_new(sp.hot_rate);
    struct pacer disk_pace = pacer_new(sp.disk_rate);
    uint64_t seq = 0;
    for (;;) {
        if (sp.hot && sp.hot_rate == 0)
            rewrite_pages(&hs, FAST_BURST_PAGES);
        else if (ticking)
            sleep_until(next_tick);
        else
            sleep_until(next_beat);

        if (ticking) {
            int64_t now = now_ns();
            int64_t elapsed_ns = now - last;
            last = now;
            if (hot_paced)
                rewrite_pages(&hs, pacer_due(&hot_pace, elapsed_ns));
            if (sp.disk)
                disk_write_blocks(&ds, pacer_due(&disk_pace, elapsed_ns));
            next_tick += TICK_NS;
            if (next_tick <= now)
                next_tick = now + TICK_NS;
        }

        int64_t now = now_ns();
        if (now >= next_beat) {
            if (sp.disk)
                disk_verify(&ds);
            printf("strata-workload: alive boot=%s seq=%" PRIu64 " pages_written=%" PRIu64, boot,
                   ++seq, hs.written);
            if (sp.disk)
                printf(" disk_writes=%" PRIu64 " disk_checks=%" PRIu64 " disk_errors=%" PRIu64,
                       ds.writes, ds.checks, ds.errors);
            printf("\n");
            fflush(stdout);
            ds.io_error_lines = 0;
            next_beat += HEARTBEAT_NS;
            if (next_beat <= now)
                next_beat = now + HEARTBEAT_NS;
        }
    }
}

/*
 * strata-workload: the memory workload the lab guest runs under /init.
 *
 * Usage: strata-workload SPEC
 *
 * SPEC is a comma-separated list of parts (each kind at most once):
 *   idle               heartbeat only
 *   stale:N            fill N MiB with non-zero data, then free it: memory the guest
 *                      used and gave back, whose contents Linux keeps
 *   hot:TOTAL:HOT:RATE keep a TOTAL MiB working set and rewrite its first HOT MiB
 *                      at RATE 4 KiB pages per second (0 = as fast as possible)
 *
 * stdout (the serial console) gets one "ready" line once setup is done, then a
 * heartbeat every 5 s; pages_written counts hot-page rewrites since start.
 *   strata-workload: ready spec=<SPEC> boot=<id>
 *   strata-workload: alive boot=<id> seq=<n> pages_written=<total>
 *
 * Exit status: 2 for a bad SPEC, 1 when memory cannot be mapped.
 *
 * Build: gcc -static -O2 -o strata-workload workload.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
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
#define MAX_FIELDS 4

struct spec {
    bool idle;
    bool stale;
    uint64_t stale_mib;
    bool hot;
    uint64_t hot_total_mib;
    uint64_t hot_mib;
    uint64_t hot_rate;
};

struct hot_set {
    uint8_t *base;
    uint64_t pages;  /* pages in the rewritten (hot) part */
    uint64_t cursor; /* next page to rewrite */
    uint64_t written;
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
            if (n != 4)
                die_spec("expected hot:TOTAL:HOT:RATE", partcopy);
            if (sp.hot)
                die_spec("hot given twice", NULL);
            sp.hot = true;
            sp.hot_total_mib = field_uint(fields[1], 1, MAX_MIB, partcopy, "TOTAL (MiB)");
            sp.hot_mib = field_uint(fields[2], 1, sp.hot_total_mib, partcopy, "HOT (MiB, <= TOTAL)");
            sp.hot_rate = field_uint(fields[3], 0, MAX_RATE, partcopy, "RATE (pages/s)");
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

/* One changing word per page is enough for QEMU to see the page dirty and its content new. */
static void rewrite_pages(struct hot_set *hs, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        volatile uint64_t *word = (volatile uint64_t *)(hs->base + hs->cursor * WL_PAGE);
        *word = ++hs->written;
        if (++hs->cursor == hs->pages)
            hs->cursor = 0;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: strata-workload SPEC   (SPEC: idle | stale:N | "
                        "hot:TOTAL:HOT:RATE, comma-separated)\n");
        return 2;
    }
    spec_text = argv[1];
    struct spec sp = parse_spec(spec_text);

    uint64_t boot_id = make_boot_id();
    char boot[17];
    snprintf(boot, sizeof boot, "%016" PRIx64, boot_id);
    uint64_t prng = boot_id | 1;

    /* The hot set is mapped before the stale memory is freed, so it cannot reuse those pages. */
    struct hot_set hs = {0};
    if (sp.hot) {
        hs.base = map_mib(sp.hot_total_mib, "hot set");
        fill_nonzero(hs.base, sp.hot_total_mib, &prng);
        hs.pages = sp.hot_mib * (WL_MIB / WL_PAGE);
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
    double credit = 0.0; /* pages owed at RATE, carried between ticks */
    double max_credit = (double)sp.hot_rate * MAX_BACKLOG_S + 1.0;
    uint64_t seq = 0;
    for (;;) {
        if (sp.hot && sp.hot_rate == 0) {
            rewrite_pages(&hs, FAST_BURST_PAGES);
        } else if (sp.hot) {
            sleep_until(next_tick);
            int64_t now = now_ns();
            credit += (double)sp.hot_rate * (double)(now - last) / (double)NS_PER_S;
            last = now;
            if (credit > max_credit)
                credit = max_credit;
            uint64_t due = (uint64_t)credit;
            credit -= (double)due;
            rewrite_pages(&hs, due);
            next_tick += TICK_NS;
            if (next_tick <= now)
                next_tick = now + TICK_NS;
        } else {
            sleep_until(next_beat);
        }

        int64_t now = now_ns();
        if (now >= next_beat) {
            printf("strata-workload: alive boot=%s seq=%" PRIu64 " pages_written=%" PRIu64 "\n",
                   boot, ++seq, hs.written);
            fflush(stdout);
            next_beat += HEARTBEAT_NS;
            if (next_beat <= now)
                next_beat = now + HEARTBEAT_NS;
        }
    }
}

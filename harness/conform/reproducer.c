#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
/* @PUDTHP_KSELFTEST@ */

/*
 * How the program runs (as `pudthp conform` runs it, harness/conform/live.py):
 *
 * - every model mm is a process; the first is forked from this one, the model's `fork`
 *   asks an mm's process to fork(), and its child serves the new mm over a socket
 *   handed to it with SCM_RIGHTS; `exit` ends the process;
 * - model page v is address WINDOW_BASE + v * 4096, a 1 GiB-aligned window that must be
 *   empty when a process starts; `mmap` is MAP_FIXED_NOREPLACE | MAP_PRIVATE |
 *   MAP_ANONYMOUS | MAP_NORESERVE, and MAP_FIXED where the range meets the program's own
 *   earlier mappings (the model's mmap replaces them);
 * - `read` and `write` load and store the first 64-bit word of the page in the owning
 *   process, a SIGSEGV caught and reported as the result;
 * - `shrink_deferred` is `echo 2 > /proc/sys/vm/drop_caches`, its result the number of the
 *   program's THPs that the op split (seen in its own pages);
 * - `split_folio` writes PID,START,END of the one page to debugfs split_huge_pages;
 * - `pageout` is MADV_PAGEOUT with swap on a zram device of the program's swap_pages
 *   (synchronous: a paged-out folio leaves the swap cache within the call);
 * - `migrate` is mbind(MPOL_BIND, MPOL_MF_MOVE) to the node, the VMA policy dropped again;
 * - `pin`/`unpin` register/unregister the page as an io_uring fixed buffer
 *   (FOLL_PIN | FOLL_LONGTERM); this process keeps the ring, so a pin outlives its mm;
 * - before every op every CPU's LRU folio batches are drained (lru_add_drain_all(),
 *   reached through POSIX_FADV_DONTNEED on a mapped page of a file on a disk file system).
 *
 * After every op, in this order, the first difference from the model counts: the result;
 * per process (by mm id) whether it lives, its VMAs in the window (prot, VM_HUGEPAGE
 * `hg`, VM_NOHUGEPAGE `nh`), smaps Rss, AnonHugePages and Swap, and per page how it is
 * mapped (PAGEMAP_SCAN: PAGE_IS_HUGE a PMD leaf, PAGE_IS_PFNZERO the zero page or the
 * huge zero PMD; pagemap present/swapped), its folio (head PFN from kpageflags, compared
 * as labels in order of first appearance), index, order, mapcount (kpagecount), first
 * word (/proc/PID/mem) and swap slot (labelled likewise); then the deltas of the global
 * counters.  Other processes move global counters too: one the kernel counted less often
 * than the model is the program's; more often, or a gauge, is only suspect.  A
 * difference fails only when another run from scratch shows it again with the same
 * values (up to three runs).
 *
 * What the model cannot know when this file is written is decided here by the rules
 * `pudthp conform` applies (harness/conform/compare.py):
 *
 * - the huge zero folio is one for the whole machine, held by every mm that mapped it
 *   until that mm exits: each run starts by checking whether a process outside it holds
 *   the folio (huge_zero_held_elsewhere, as live.huge_zero_folio_held_elsewhere), and if
 *   one does, the expectations of a model told the folio exists are used (counters_held);
 * - drop_caches repeats the deferred split shrinker's pass while the machine's shrinkers
 *   still free enough, and each pass fails again on a folio that cannot be split: the
 *   model's pass counts as often as the kernel's failed splits show, when they are a whole
 *   multiple of the model's one-pass count (shrinker_passes, model_drop_slab);
 * - known disagreements (compare.py KNOWN) are reported as `# known:` and do not fail;
 *   after one in a process's state the rest of the ops are skipped.  One that rests on a
 *   fact about the machine (another process holding the huge zero folio: the kernel does
 *   not allocate it where the model does) is known only when the check after the runs
 *   finds the fact (compare.py machine_facts); otherwise it fails like any other.
 */

#define PG_SIZE 4096UL
#define THP_ORDER 9
#define THP_NR (1UL << THP_ORDER)
#define WINDOW_BASE 0x100000000000UL /* 16 TiB: 1 GiB aligned, far below mmap_base */
#define LOCK_PATH "/run/lock/pudthp-conform.lock"
/* The record of changed settings `pudthp conform` keeps (live.py SettingsRecord) */
#define RECORD_DIR "/run/pudthp"
#define RECORD_PATH RECORD_DIR "/conform-settings.json"
#define RECORD_FORMAT "pudthp-conform-settings/1"
#define THP_DIR "/sys/kernel/mm/transparent_hugepage"
#define PMD_DIR THP_DIR "/hugepages-2048kB"
#define PUD_DIR THP_DIR "/hugepages-1048576kB"
#define DEBUGFS "/sys/kernel/debug"
#define SPLIT_HUGE_PAGES DEBUGFS "/split_huge_pages"
#define DROP_CACHES "/proc/sys/vm/drop_caches"
#define ZRAM_SYS "/sys/block/zram0"
#define ZRAM_DEV "/dev/zram0"
#define SERVER_TIMEOUT_S 120
#define LOCK_TIMEOUT_S 600
#define MAX_RUNS 3

#define KSFT_PASS 0
#define KSFT_FAIL 1
#define KSFT_SKIP 4

/* KTAP lines: in tools/testing/selftests/mm through kselftest.h's helpers, which count */
#ifdef PUDTHP_KSELFTEST
#define TAP_HEADER() ksft_print_header()
#define TAP_PLAN(n) ksft_set_plan(n)
#define TAP_OK(n, ...) ksft_test_result_pass(__VA_ARGS__)
#define TAP_NOT_OK(n, ...) ksft_test_result_fail(__VA_ARGS__)
#define TAP_SKIP(n, ...) ksft_test_result_skip(__VA_ARGS__)
#define TAP_TOTALS(pass, failed, skipped) ((void)(pass), (void)(skipped), ksft_print_cnts())
#else
#define TAP_HEADER() printf("TAP version 13\n")
#define TAP_PLAN(n) printf("1..%d\n", (n))
#define TAP_OK(n, ...) tap_line("ok", (n), __VA_ARGS__)
#define TAP_NOT_OK(n, ...) tap_line("not ok", (n), __VA_ARGS__)
#define TAP_SKIP(n, ...) tap_line("ok", (n), __VA_ARGS__)
#define TAP_TOTALS(pass, failed, skipped)                                                  \
	printf("# Totals: pass:%d fail:%d xfail:0 xpass:0 skip:%d error:0\n", (pass),      \
	       (failed), (skipped))
#endif

/* What system headers may lack (include/uapi/...) */
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef PR_SET_THP_DISABLE
#define PR_SET_THP_DISABLE 41
#endif

/* PAGEMAP_SCAN (include/uapi/linux/fs.h): struct pm_scan_arg, struct page_region */
struct scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct scan_region {
	uint64_t start, end, categories;
};
#define PAGEMAP_SCAN_IOCTL _IOWR('f', 16, struct scan_arg)
#define SCAN_PRESENT (1ULL << 3) /* PAGE_IS_PRESENT */
#define SCAN_SWAPPED (1ULL << 4) /* PAGE_IS_SWAPPED */
#define SCAN_PFNZERO (1ULL << 5) /* PAGE_IS_PFNZERO */
#define SCAN_HUGE (1ULL << 6)    /* PAGE_IS_HUGE */
#define SCAN_CATEGORIES (SCAN_PRESENT | SCAN_SWAPPED | SCAN_PFNZERO | SCAN_HUGE)
#define SCAN_VEC_LEN 4096

/* /proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst) */
#define PM_PRESENT (1ULL << 63)
#define PM_PFN_MASK ((1ULL << 55) - 1)
#define PM_SWAP_OFFSET_SHIFT 5
/* /proc/kpageflags (include/uapi/linux/kernel-page-flags.h) */
#define KPF_COMPOUND_HEAD 15
#define KPF_COMPOUND_TAIL 16

/* io_uring (include/uapi/linux/io_uring.h), through raw system calls */
#define NR_IO_URING_SETUP 425
#define NR_IO_URING_REGISTER 427
#define IORING_REGISTER_BUFFERS_ 0
#define IORING_UNREGISTER_BUFFERS_ 1
struct uring_params {
	uint32_t words[30]; /* struct io_uring_params, 120 bytes, all zero */
};

/* pidfd (include/uapi/linux/pidfd.h), close_range */
#define NR_PIDFD_SEND_SIGNAL 424
#define NR_PIDFD_OPEN 434
#define NR_CLOSE_RANGE 436
#define NR_PIDFD_GETFD 438

/* include/uapi/linux/mempolicy.h */
#define MPOL_DEFAULT_ 0
#define MPOL_BIND_ 2
#define MPOL_MF_MOVE_ (1 << 1)
#define MAX_NODE_BITS 1024

/* statfs f_type of file systems without a backing device (include/uapi/linux/magic.h) */
#define TMPFS_MAGIC_ 0x01021994
#define RAMFS_MAGIC_ 0x858458f6

/* -------------------------------------------------------------------------------------- */
/* The description of a program                                                           */
/* -------------------------------------------------------------------------------------- */

enum op_kind {
	OP_NONE, OP_MMAP, OP_MUNMAP, OP_MPROTECT, OP_MADVISE, OP_READ, OP_WRITE, OP_FORK,
	OP_EXIT, OP_SPLIT_FOLIO, OP_SHRINK_DEFERRED, OP_MIGRATE, OP_PIN, OP_UNPIN,
};

/* How a page is mapped: observe.py's kinds */
enum page_kind { K_NONE, K_PTE, K_PMD, K_ZERO, K_HZERO, K_SWAP };
static const char *const kind_names[] = { "none", "pte", "pmd", "zero", "hzero", "swap" };

#define VMA_HG 1 /* VM_HUGEPAGE, smaps VmFlags hg */
#define VMA_NH 2 /* VM_NOHUGEPAGE, smaps VmFlags nh */

struct program {
	const char *name;
	int nops;
	int nmms;                  /* processes the program creates */
	int pud;                   /* needs PUD THP; no page walks (they split PUD leaves) */
	const char *thp_enabled, *pmd_enabled, *pud_enabled;
	int use_zero_page, shrink_underused;
	unsigned long swap_pages;  /* 0: no swap */
	unsigned long window_pages;
	int split_folio, pin;      /* needs debugfs split_huge_pages, io_uring */
	int nodes;                 /* NUMA nodes migrate needs (0: none) */
};

struct counter_def {
	const char *name;          /* as pudthp names it: vmstat.X, mthp.X */
	const char *path;
	const char *field;         /* the /proc/vmstat field, or "" for a one-value file */
	int global_state;          /* a gauge, or global state: never the program's alone */
	int noise;                 /* only watched: moved by activity outside the program */
};

struct vma_expect {
	unsigned long start, end;  /* pages from the window base */
	int prot, flags;
};

/*
 * n pages from vpn that the model shows alike: the next page of a large folio has the
 * next index, the next order-0 folio the next label, the next swap PTE the next slot
 * label; other fields stay.  Which fields a kind has: pte/pmd folio, index, order,
 * mapcount, content; zero/hzero content; swap slot; none nothing.
 */
struct page_run {
	unsigned long vpn, n;
	int kind;
	long folio, index;
	int order;
	long mapcount;
	unsigned long long content;
	long slot;
};

struct mm_expect {
	int mm;
	const struct vma_expect *vmas;
	int nvmas;
	long rss, anon_huge, swap; /* pages */
	const struct page_run *runs;
	int nruns;
};

struct counter_delta {
	const char *name;
	long delta;
};

/* Facts about the machine a known disagreement may rest on (compare.py Known.needs),
 * checked once the runs are over, as `pudthp conform` checks them (machine_facts) */
enum fact { FACT_NONE, FACT_HUGE_ZERO_HELD_ELSEWHERE };

struct known_here {
	const char *cls;           /* observable class: rss, page.kind, vmstat.X, ... */
	int reason;                /* index into known_reasons[] */
	int fact;                  /* FACT_NONE, or the fact it needs */
};

struct step {
	const char *desc;          /* the op as pudthp prints it */
	int op, mm;
	unsigned long start, npages; /* pages; start is the address of single-page ops */
	int arg;                   /* prot, advice, node, pin id */
	unsigned long long value;
	const char *result;        /* the model's result */
	const struct mm_expect *mms; /* the live mms after the op, by id */
	int nmms;
	const struct counter_delta *counters; /* the model's non-zero deltas */
	int ncounters;
	/* the deltas when a process outside the run holds the huge zero folio at the start
	 * (NULL: the same as counters) */
	const struct counter_delta *counters_held;
	int ncounters_held;
	/* shrink_deferred: what each further pass of the deferred split shrinker adds */
	const struct counter_delta *per_pass;
	int nper_pass;
	const struct known_here *known;
	int nknown;
};

#define EXPECT(x) .mms = x##_mms, .nmms = x##_nmms, .counters = x##_counters, \
	.ncounters = x##_ncounters, .known = x##_known, .nknown = x##_nknown

/* @PUDTHP_PROGRAM@ */
/* -------------------------------------------------------------------------------------- */
/* Small helpers                                                                          */
/* -------------------------------------------------------------------------------------- */

#define NCOUNTERS ((int)(sizeof(counters) / sizeof(counters[0])))
#define NKNOWN_REASONS ((int)(sizeof(known_reasons) / sizeof(known_reasons[0])))

static char err[1024]; /* why the last helper that returned -1 failed */

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, sizeof(err), fmt, ap);
	va_end(ap);
	return -1;
}

#ifndef PUDTHP_KSELFTEST
static void tap_line(const char *status, int n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void tap_line(const char *status, int n, const char *fmt, ...)
{
	va_list ap;

	printf("%s %d ", status, n);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}
#endif

static void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void diag(const char *fmt, ...)
{
	va_list ap;

	fputs("# ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p) {
		printf("Bail out! out of memory\n");
		exit(KSFT_FAIL);
	}
	return p;
}

static void *xrealloc(void *p, size_t size)
{
	p = realloc(p, size ? size : 1);
	if (!p) {
		printf("Bail out! out of memory\n");
		exit(KSFT_FAIL);
	}
	return p;
}

/* A growable string */
struct sbuf {
	char *s;
	size_t len, cap;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		size_t room = b->cap - b->len;

		va_start(ap, fmt);
		n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? room : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if (b->s && (size_t)n < room) {
			b->len += n;
			return;
		}
		b->cap = (b->cap + n + 1) * 2;
		b->s = xrealloc(b->s, b->cap);
	}
}

static void sb_free(struct sbuf *b)
{
	free(b->s);
	b->s = NULL;
	b->len = b->cap = 0;
}

static const char *sb_str(const struct sbuf *b)
{
	return b->s ? b->s : "";
}

static const char *errno_name(int e)
{
	static char other[32];

	switch (e) {
	case EINVAL: return "EINVAL";
	case ENOMEM: return "ENOMEM";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case ESRCH: return "ESRCH";
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case EEXIST: return "EEXIST";
	case EAGAIN: return "EAGAIN";
	case EIO: return "EIO";
	case ENOENT: return "ENOENT";
	case ENOSYS: return "ENOSYS";
	case EOVERFLOW: return "EOVERFLOW";
	case ENXIO: return "ENXIO";
	}
	snprintf(other, sizeof(other), "errno%d", e);
	return other;
}

/* Whole small files (sysfs, procfs): async-signal-safe */
static int read_text(const char *path, char *buf, size_t size)
{
	size_t len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	while (len + 1 < size) {
		ssize_t n = read(fd, buf + len, size - 1 - len);

		if (n < 0) {
			int e = errno;

			close(fd);
			return -e;
		}
		if (n == 0)
			break;
		len += n;
	}
	buf[len] = 0;
	close(fd);
	return (int)len;
}

/* One write(), as sysfs and procfs want it: async-signal-safe */
static int write_text(const char *path, const char *text)
{
	size_t len = strlen(text);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, text, len);
	if (n < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	close(fd);
	return 0;
}

/* A file of any size, into a buffer that grows (smaps, maps, vmstat) */
static int read_all(const char *path, struct sbuf *b)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	b->len = 0;
	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t n;

		if (b->cap - b->len < 4096) {
			b->cap = b->cap * 2 + 65536;
			b->s = xrealloc(b->s, b->cap);
		}
		n = read(fd, b->s + b->len, b->cap - b->len - 1);
		if (n < 0) {
			int e = errno;

			close(fd);
			return -e;
		}
		if (n == 0)
			break;
		b->len += n;
	}
	b->s[b->len] = 0;
	close(fd);
	return 0;
}

/* The [bracketed] choice of a sysfs enum file, or the whole value, trimmed */
static void selected(const char *text, char *out, size_t size)
{
	const char *a = strchr(text, '['), *b = a ? strchr(a, ']') : NULL;
	size_t n;

	if (a && b) {
		text = a + 1;
		n = b - text;
	} else {
		while (*text == ' ' || *text == '\n' || *text == '\t')
			text++;
		n = strlen(text);
		while (n && (text[n - 1] == '\n' || text[n - 1] == ' ' || text[n - 1] == '\t'))
			n--;
	}
	if (n >= size)
		n = size - 1;
	memcpy(out, text, n);
	out[n] = 0;
}

static int exists(const char *path)
{
	return access(path, F_OK) == 0;
}

/* -------------------------------------------------------------------------------------- */
/* Settings: every knob written is saved first and written back at the end, whatever     */
/* ends the run (a signal handler restores too, with async-signal-safe calls only)       */
/* -------------------------------------------------------------------------------------- */

#define MAX_SAVED 64

struct saved_knob {
	char path[224];
	char value[96];
};

static struct saved_knob saved[MAX_SAVED];
static volatile sig_atomic_t nsaved;
static volatile sig_atomic_t swap_on, zram_sized, debugfs_mounted;
static volatile sig_atomic_t restore_failures;
static char restore_problem[256];

/*
 * A SIGKILL restores nothing, so every change is first written to the record `pudthp
 * conform` keeps, in its format ({"format": ..., "pid": ..., "entries": [{"set": PATH,
 * "old": VALUE} or {"undo": [ACTION, ARG]}, ...]}, oldest first): each knob's original
 * value and each device step to undo (swapoff, zram_reset, umount), synced to disk before
 * the change is made.  `pudthp conform --restore`, the next `pudthp conform` and the next
 * reproducer put back what a killed run left; a run that restored everything removes it.
 */
#define MAX_RECORD (MAX_SAVED + 8)

struct record_entry {
	int undo;         /* 0: a knob (a = path, b = old value); 1: a step (a = action, b = arg) */
	char a[224];
	char b[96];
};

static struct record_entry record[MAX_RECORD];
static int nrecord;

static void json_string(struct sbuf *out, const char *s)
{
	sb_printf(out, "\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			sb_printf(out, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			sb_printf(out, "\\u%04x", c);
		else
			sb_printf(out, "%c", c);
	}
	sb_printf(out, "\"");
}

/* The record as it is now, on disk (synced) before this returns; none left: removed */
static int record_write(void)
{
	struct sbuf text = { 0 };
	char tmp[sizeof(RECORD_PATH) + 32];
	int i, fd, ok;

	if (!nrecord) {
		if (unlink(RECORD_PATH) && errno != ENOENT)
			return fail("cannot remove %s: %s", RECORD_PATH, strerror(errno));
		return 0;
	}
	sb_printf(&text, "{\"format\": \"%s\", \"pid\": %d, \"entries\": [", RECORD_FORMAT,
		  (int)getpid());
	for (i = 0; i < nrecord; i++) {
		sb_printf(&text, "%s{\"%s\": ", i ? ", " : "", record[i].undo ? "undo" : "set");
		if (record[i].undo) {
			sb_printf(&text, "[");
			json_string(&text, record[i].a);
			sb_printf(&text, ", ");
			json_string(&text, record[i].b);
			sb_printf(&text, "]}");
		} else {
			json_string(&text, record[i].a);
			sb_printf(&text, ", \"old\": ");
			json_string(&text, record[i].b);
			sb_printf(&text, "}");
		}
	}
	sb_printf(&text, "]}\n");
	mkdir(RECORD_DIR, 0755);
	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", RECORD_PATH, (int)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ok = fd >= 0 && write(fd, sb_str(&text), text.len) == (ssize_t)text.len && !fsync(fd);
	if (fd >= 0)
		close(fd);
	sb_free(&text);
	if (!ok || rename(tmp, RECORD_PATH)) {
		int e = errno;

		unlink(tmp);
		return fail("cannot write %s: %s", RECORD_PATH, strerror(e));
	}
	fd = open(RECORD_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	return 0;
}

static int record_add(int undo, const char *a, const char *b)
{
	if (nrecord == MAX_RECORD)
		return fail("too many settings to record");
	record[nrecord].undo = undo;
	snprintf(record[nrecord].a, sizeof(record[nrecord].a), "%s", a);
	snprintf(record[nrecord].b, sizeof(record[nrecord].b), "%s", b);
	nrecord++;
	return record_write();
}

/* A knob that holds the value already is not written: some writes act even when they
 * change nothing (zswap's enabled, even N, initialises zswap, which turns off large-folio
 * swap-in until reboot) */
static int set_knob(const char *path, const char *value)
{
	char buf[512], now[96];
	int i, r;

	r = read_text(path, buf, sizeof(buf));
	if (r < 0)
		return fail("cannot read %s: %s", path, strerror(-r));
	selected(buf, now, sizeof(now));
	if (!strcmp(now, value))
		return 0;
	for (i = 0; i < nsaved; i++)
		if (!strcmp(saved[i].path, path))
			break;
	if (i == nsaved) {
		if (nsaved == MAX_SAVED)
			return fail("too many settings to save");
		snprintf(saved[i].path, sizeof(saved[i].path), "%s", path);
		snprintf(saved[i].value, sizeof(saved[i].value), "%s", now);
		if (record_add(0, path, saved[i].value))
			return -1;
		nsaved = i + 1; /* only now may a signal handler write it back */
	}
	r = write_text(path, value);
	if (r < 0)
		return fail("cannot set %s to %s: %s", path, value, strerror(-r));
	return 0;
}

static void note_restore_problem(const char *what)
{
	size_t n = strlen(what);

	restore_failures = restore_failures + 1;
	if (restore_problem[0])
		return;
	if (n >= sizeof(restore_problem))
		n = sizeof(restore_problem) - 1;
	memcpy(restore_problem, what, n);
	restore_problem[n] = 0;
}

static void swap_off(void)
{
	if (swap_on) {
		if (swapoff(ZRAM_DEV) != 0 && errno != EINVAL)
			note_restore_problem("swapoff " ZRAM_DEV);
		swap_on = 0;
	}
	if (zram_sized) {
		if (write_text(ZRAM_SYS "/reset", "1") != 0)
			note_restore_problem("reset " ZRAM_DEV);
		zram_sized = 0;
	}
}

/* Put back everything changed, newest first, and drop the record when all went back (else
 * it stays for `pudthp conform --restore`): async-signal-safe */
static void restore_all(void)
{
	swap_off();
	if (debugfs_mounted) {
		if (umount2(DEBUGFS, 0) != 0)
			note_restore_problem("umount " DEBUGFS);
		debugfs_mounted = 0;
	}
	while (nsaved > 0) {
		int i = nsaved - 1;
		char buf[512], now[96];

		/* no write that changes nothing (set_knob) */
		if (read_text(saved[i].path, buf, sizeof(buf)) >= 0) {
			selected(buf, now, sizeof(now));
			if (!strcmp(now, saved[i].value)) {
				nsaved = i;
				continue;
			}
		}
		if (write_text(saved[i].path, saved[i].value) != 0)
			note_restore_problem(saved[i].path);
		nsaved = i;
	}
	if (nrecord && !restore_failures && (!unlink(RECORD_PATH) || errno == ENOENT))
		nrecord = 0;
}

/* -------------------------------------------------------------------------------------- */
/* The processes of the program's mms                                                     */
/* -------------------------------------------------------------------------------------- */

struct proc {
	int alive;
	pid_t pid;
	int pidfd, sock, pagemap_fd, mem_fd;
};

static struct proc *procs;          /* by mm id: prog.nmms of them */
static volatile sig_atomic_t nprocs; /* mm ids handed out in this run */
static pid_t controller;

struct pin {
	int id, fd;                    /* the pin id, the io_uring holding it */
};
static struct pin *pins;
static int npins, next_pin;

enum { REQ_MMAP, REQ_MUNMAP, REQ_MPROTECT, REQ_MADVISE, REQ_READ, REQ_WRITE, REQ_FORK,
       REQ_EXIT, REQ_PIN, REQ_CLOSE, REQ_MBIND };
struct request {
	int what, arg;
	uint64_t addr, len, value;
};

enum { REP_VALUE, REP_ERRNO, REP_SEGV, REP_FAILED };
struct reply {
	int status, err;
	uint64_t value;
	char msg[200];
};

static void kill_processes(void) /* async-signal-safe */
{
	int i;

	for (i = 0; i < nprocs; i++) {
		if (!procs[i].alive)
			continue;
		if (procs[i].pidfd >= 0)
			syscall(NR_PIDFD_SEND_SIGNAL, procs[i].pidfd, SIGKILL, NULL, 0);
		else if (procs[i].pid > 0)
			kill(procs[i].pid, SIGKILL);
	}
}

static void on_signal(int sig)
{
	struct sigaction sa;

	if (getpid() != controller)
		_exit(128 + sig);
	kill_processes();
	restore_all();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	sigaction(sig, &sa, NULL);
	raise(sig);
}

static void catch_signals(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGSEGV, SIGBUS,
				    SIGABRT, SIGFPE, SIGILL };
	struct sigaction sa;
	size_t i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigfillset(&sa.sa_mask);
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	sa.sa_handler = SIG_IGN; /* exited processes are reaped by the kernel */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGCHLD, &sa, NULL);
	sigaction(SIGPIPE, &sa, NULL);
}

/* ---- the process side ---- */

static sigjmp_buf access_jmp;
static volatile sig_atomic_t in_access;

static void on_access_fault(int sig)
{
	struct sigaction sa;

	if (in_access)
		siglongjmp(access_jmp, 1);
	memset(&sa, 0, sizeof(sa)); /* not a user access of the program: crash as usual */
	sa.sa_handler = SIG_DFL;
	sigaction(sig, &sa, NULL);
}

/*
 * A user load or store of the first word of a page: 0, or -1 for SIGSEGV.  A write is a
 * store alone (one volatile 64-bit store, nothing read first): a read before it would be a
 * read fault mapping the huge zero PMD, and the write fault would then replace it, which
 * the model's write does not do (conform's executor stores with memmove for the same
 * reason).
 */
static int __attribute__((noinline)) user_access(uint64_t addr, int write,
						 uint64_t value, uint64_t *out)
{
	volatile uint64_t *word = (volatile uint64_t *)(uintptr_t)addr;

	if (sigsetjmp(access_jmp, 1)) {
		in_access = 0;
		return -1;
	}
	in_access = 1;
	if (write)
		*word = value;
	else
		*out = *word;
	in_access = 0;
	return 0;
}

static void send_reply(int sock, int status, int e, uint64_t value, const char *msg)
{
	struct reply rp;

	memset(&rp, 0, sizeof(rp));
	rp.status = status;
	rp.err = e;
	rp.value = value;
	snprintf(rp.msg, sizeof(rp.msg), "%s", msg ? msg : "");
	if (send(sock, &rp, sizeof(rp), MSG_NOSIGNAL) != (ssize_t)sizeof(rp))
		_exit(1);
}

/* A request, and the descriptor that came with it (-1 if none); 0 at EOF */
static int recv_request(int sock, struct request *rq, int *fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { rq, sizeof(*rq) };
	struct msghdr mh;
	struct cmsghdr *c;
	ssize_t n;

	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = u.buf;
	mh.msg_controllen = sizeof(u.buf);
	*fd = -1;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return 0;
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(fd, CMSG_DATA(c), sizeof(int));
	return n == sizeof(*rq);
}

static void close_other_fds(int keep)
{
	long i, max = sysconf(_SC_OPEN_MAX);

	if (keep > 3 && syscall(NR_CLOSE_RANGE, 3U, (unsigned int)keep - 1, 0U) == 0 &&
	    syscall(NR_CLOSE_RANGE, (unsigned int)keep + 1, ~0U, 0U) == 0)
		return;
	if (keep == 3 && syscall(NR_CLOSE_RANGE, 4U, ~0U, 0U) == 0)
		return;
	if (max < 0 || max > 65536)
		max = 65536;
	for (i = 3; i < max; i++)
		if (i != keep)
			close((int)i);
}

/*
 * A process of the program makes no THP event of its own: THP allowed again for its mm
 * (this process set PR_SET_THP_DISABLE, so the memory a process inherits holds no THP),
 * but not for any VMA it inherited; and the window is empty.
 */
static int quiet_mm(void)
{
	char maps[1 << 16];
	char *line, *next;
	int r;

	prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0);
	r = read_text("/proc/self/maps", maps, sizeof(maps));
	if (r < 0)
		return fail("/proc/self/maps: %s", strerror(-r));
	if (r >= (int)sizeof(maps) - 1)
		return fail("/proc/self/maps is too long");
	for (line = maps; *line; line = next) {
		unsigned long lo, hi;

		next = strchr(line, '\n');
		next = next ? next + 1 : line + strlen(line);
		if (sscanf(line, "%lx-%lx", &lo, &hi) != 2)
			continue;
		if (lo < WINDOW_BASE + prog.window_pages * PG_SIZE && hi > WINDOW_BASE)
			return fail("the address window is not empty: %.*s", (int)(next - line - 1),
				    line);
		madvise((void *)lo, hi - lo, MADV_NOHUGEPAGE); /* [vsyscall] refuses: fine */
	}
	return 0;
}

static void __attribute__((noreturn)) serve(int sock)
{
	for (;;) {
		struct request rq;
		uint64_t value = 0;
		int fd, r;

		if (!recv_request(sock, &rq, &fd))
			_exit(0); /* the controller is gone */
		switch (rq.what) {
		case REQ_MMAP: {
			int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
			void *want = (void *)(uintptr_t)rq.addr;
			void *p = mmap(want, rq.len, rq.arg, flags | MAP_FIXED_NOREPLACE, -1, 0);

			if (p == MAP_FAILED && errno == EEXIST)
				p = mmap(want, rq.len, rq.arg, flags | MAP_FIXED, -1, 0);
			if (p == MAP_FAILED)
				send_reply(sock, REP_ERRNO, errno, 0, NULL);
			else if (p != want)
				send_reply(sock, REP_FAILED, 0, 0, "mmap did not map at the address");
			else
				send_reply(sock, REP_VALUE, 0, 0, NULL);
			break;
		}
		case REQ_MUNMAP:
			r = munmap((void *)(uintptr_t)rq.addr, rq.len);
			send_reply(sock, r ? REP_ERRNO : REP_VALUE, r ? errno : 0, 0, NULL);
			break;
		case REQ_MPROTECT:
			r = mprotect((void *)(uintptr_t)rq.addr, rq.len, rq.arg);
			send_reply(sock, r ? REP_ERRNO : REP_VALUE, r ? errno : 0, 0, NULL);
			break;
		case REQ_MADVISE:
			r = madvise((void *)(uintptr_t)rq.addr, rq.len, rq.arg);
			send_reply(sock, r ? REP_ERRNO : REP_VALUE, r ? errno : 0, 0, NULL);
			break;
		case REQ_READ:
		case REQ_WRITE:
			if (user_access(rq.addr, rq.what == REQ_WRITE, rq.value, &value))
				send_reply(sock, REP_SEGV, 0, 0, NULL);
			else
				send_reply(sock, REP_VALUE, 0, value, NULL);
			break;
		case REQ_FORK: {
			pid_t pid;

			if (fd < 0) {
				send_reply(sock, REP_FAILED, 0, 0, "fork: no socket came along");
				break;
			}
			pid = fork();
			if (pid < 0) {
				close(fd);
				send_reply(sock, REP_FAILED, 0, 0, "fork failed");
				break;
			}
			if (pid == 0) { /* the child serves the new mm */
				close(sock);
				sock = fd;
				send_reply(sock, REP_VALUE, 0, (uint64_t)getpid(), NULL);
				continue;
			}
			close(fd);
			send_reply(sock, REP_VALUE, 0, (uint64_t)pid, NULL);
			break;
		}
		case REQ_EXIT:
			send_reply(sock, REP_VALUE, 0, 0, NULL);
			_exit(0);
		case REQ_PIN: {
			/*
			 * FOLL_PIN of one page: a new io_uring with the page registered as its
			 * fixed buffer (io_sqe_buffers_register -> pin_user_pages_fast(FOLL_WRITE |
			 * FOLL_LONGTERM)); the controller takes its own copy of the ring.
			 */
			struct uring_params params;
			struct iovec iov = { (void *)(uintptr_t)rq.addr, PG_SIZE };
			long ring;

			memset(&params, 0, sizeof(params));
			ring = syscall(NR_IO_URING_SETUP, 1U, &params);
			if (ring < 0) {
				char msg[96];

				snprintf(msg, sizeof(msg), "io_uring_setup: %s", strerror(errno));
				send_reply(sock, REP_FAILED, 0, 0, msg);
				break;
			}
			if (syscall(NR_IO_URING_REGISTER, (unsigned int)ring,
				    IORING_REGISTER_BUFFERS_, &iov, 1U) < 0) {
				int e = errno;

				close((int)ring);
				send_reply(sock, REP_ERRNO, e, 0, NULL);
				break;
			}
			send_reply(sock, REP_VALUE, 0, (uint64_t)ring, NULL);
			break;
		}
		case REQ_CLOSE:
			close(rq.arg);
			send_reply(sock, REP_VALUE, 0, 0, NULL);
			break;
		case REQ_MBIND: {
			/* mbind(MPOL_BIND to the node, MPOL_MF_MOVE); then the VMA policy is
			 * dropped again, so the VMAs split by it can merge back as the model's */
			unsigned long mask[MAX_NODE_BITS / 64];
			long rr;
			int e;

			memset(mask, 0, sizeof(mask));
			mask[rq.value / 64] |= 1UL << (rq.value % 64);
			rr = syscall(SYS_mbind, rq.addr, rq.len, MPOL_BIND_, mask,
				     (unsigned long)MAX_NODE_BITS, MPOL_MF_MOVE_);
			e = rr < 0 ? errno : 0;
			syscall(SYS_mbind, rq.addr, rq.len, MPOL_DEFAULT_, NULL, 0UL, 0U);
			send_reply(sock, e ? REP_ERRNO : REP_VALUE, e, 0, NULL);
			break;
		}
		default:
			send_reply(sock, REP_FAILED, 0, 0, "unknown request");
		}
	}
}

static void __attribute__((noreturn)) server(int sock)
{
	static const int dfl[] = { SIGTERM, SIGHUP, SIGQUIT, SIGBUS, SIGABRT, SIGFPE, SIGILL };
	struct sigaction sa;
	size_t i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	for (i = 0; i < sizeof(dfl) / sizeof(dfl[0]); i++)
		sigaction(dfl[i], &sa, NULL);
	sa.sa_handler = SIG_IGN; /* the controller owns Ctrl-C; forked children reap themselves */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGCHLD, &sa, NULL);
	sa.sa_handler = on_access_fault;
	sigaction(SIGSEGV, &sa, NULL);
	close_other_fds(sock);
	if (quiet_mm()) {
		send_reply(sock, REP_FAILED, 0, 0, err);
		_exit(1);
	}
	send_reply(sock, REP_VALUE, 0, (uint64_t)getpid(), NULL);
	serve(sock);
}

/* ---- the controller side ---- */

static int send_request(struct proc *pr, const struct request *rq, int fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { (void *)rq, sizeof(*rq) };
	struct msghdr mh;

	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	if (sendmsg(pr->sock, &mh, MSG_NOSIGNAL) != (ssize_t)sizeof(*rq))
		return fail("cannot reach the process of pid %d: %s", (int)pr->pid,
			    strerror(errno));
	return 0;
}

static int recv_reply(struct proc *pr, int mm, struct reply *rp)
{
	ssize_t n;

	do
		n = recv(pr->sock, rp, sizeof(*rp), 0);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		return fail("the process of mm %d (pid %d) died", mm, (int)pr->pid);
	if (n < 0)
		return fail("the process of mm %d (pid %d) stopped answering: %s", mm,
			    (int)pr->pid, strerror(errno));
	if (n != sizeof(*rp))
		return fail("a short answer from mm %d", mm);
	if (rp->status == REP_FAILED)
		return fail("mm %d: %s", mm, rp->msg);
	return 0;
}

static int call(int mm, const struct request *rq, int fd, struct reply *rp)
{
	if (send_request(&procs[mm], rq, fd))
		return -1;
	return recv_reply(&procs[mm], mm, rp);
}

static int wait_gone(struct proc *pr, int mm, int timeout_s)
{
	struct pollfd p = { pr->pidfd, POLLIN, 0 };
	int r;

	do
		r = poll(&p, 1, timeout_s * 1000);
	while (r < 0 && errno == EINTR);
	if (r <= 0)
		return fail("the process of mm %d (pid %d) did not exit", mm, (int)pr->pid);
	return 0;
}

static void forget(struct proc *pr)
{
	int *fds[] = { &pr->sock, &pr->pagemap_fd, &pr->mem_fd, &pr->pidfd };
	size_t i;

	pr->alive = 0;
	for (i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

/* The process serving mm `mm` said it is ready on `sock` (pid known from its parent) */
static int attach(int mm, pid_t pid, int sock)
{
	struct proc *pr = &procs[mm];
	struct timeval tv = { SERVER_TIMEOUT_S, 0 };
	struct reply rp;
	char path[64];

	pr->pid = pid;
	pr->sock = sock;
	pr->pidfd = pr->pagemap_fd = pr->mem_fd = -1;
	pr->alive = 1;
	nprocs = mm + 1; /* a signal handler kills it from now on */
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (recv_reply(pr, mm, &rp))
		return -1;
	if ((pid_t)rp.value != pid)
		return fail("mm %d: the process did not start", mm);
	pr->pidfd = (int)syscall(NR_PIDFD_OPEN, pid, 0U);
	if (pr->pidfd < 0)
		return fail("pidfd_open: %s", strerror(errno));
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	pr->pagemap_fd = open(path, O_RDONLY | O_CLOEXEC);
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
	pr->mem_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (pr->pagemap_fd < 0 || pr->mem_fd < 0)
		return fail("cannot open /proc/%d/pagemap or mem: %s", (int)pid, strerror(errno));
	return 0;
}

static int start_first(void)
{
	int sv[2];
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		return fail("socketpair: %s", strerror(errno));
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return fail("fork: %s", strerror(errno));
	if (pid == 0) {
		close(sv[0]);
		server(sv[1]);
	}
	close(sv[1]);
	return attach(0, pid, sv[0]);
}

static void end_processes(void)
{
	int i;

	kill_processes();
	for (i = 0; i < nprocs; i++) {
		if (procs[i].alive && procs[i].pidfd >= 0)
			wait_gone(&procs[i], i, 10);
		forget(&procs[i]);
	}
	nprocs = 0;
	for (i = 0; i < npins; i++) {
		syscall(NR_IO_URING_REGISTER, (unsigned int)pins[i].fd,
			IORING_UNREGISTER_BUFFERS_, NULL, 0U);
		close(pins[i].fd);
	}
	npins = 0;
}

/* -------------------------------------------------------------------------------------- */
/* Machine-wide helpers: drop_caches, the LRU drain, the lock, swap, debugfs              */
/* -------------------------------------------------------------------------------------- */

static int drop_slab(void)
{
	/* drop_slab() runs every shrinker: the deferred split one and the huge zero folio's */
	int r = write_text(DROP_CACHES, "2");

	return r ? fail("cannot write %s: %s", DROP_CACHES, strerror(-r)) : 0;
}

/*
 * lru_add_drain_all() on demand.  The kernel parks folios in per-CPU batches, each holding
 * a folio reference until drained; the model has none.  A stray reference makes reclaim
 * keep a folio it already unmapped (unwritten, in the swap cache), and this program makes
 * such references itself: its /proc/PID/mem reads are GUP reads that mark pages accessed.
 * POSIX_FADV_DONTNEED drains every CPU when it cannot drop a page-cache folio
 * (generic_fadvise -> mapping_try_invalidate fails -> lru_add_drain_all): so one page of
 * a file on a disk file system (tmpfs ignores the advice) stays mapped, and is asked to go.
 */
static int drain_fd = -1;

static int open_drain(void)
{
	static const char *const dirs[] = { "/var/tmp", "/tmp", "." };
	char path[256], page[PG_SIZE];
	struct statfs sf;
	size_t i;
	char *map;

	for (i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		if (statfs(dirs[i], &sf) || access(dirs[i], W_OK))
			continue;
		if ((unsigned long)sf.f_type == TMPFS_MAGIC_ ||
		    (unsigned long)sf.f_type == RAMFS_MAGIC_)
			continue;
		snprintf(path, sizeof(path), "%s/pudthp-drain-XXXXXX", dirs[i]);
		drain_fd = mkostemp(path, O_CLOEXEC);
		if (drain_fd < 0)
			continue;
		unlink(path);
		memset(page, 1, sizeof(page));
		if (write(drain_fd, page, sizeof(page)) != (ssize_t)sizeof(page))
			return fail("cannot write the LRU drain file: %s", strerror(errno));
		map = mmap(NULL, PG_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, drain_fd, 0);
		if (map == MAP_FAILED)
			return fail("cannot map the LRU drain file: %s", strerror(errno));
		map[0] = 1; /* mapped: mapping_evict_folio refuses it */
		return 0;
	}
	return fail("no directory on a disk file system for the LRU drain file "
		    "(tmpfs ignores POSIX_FADV_DONTNEED)");
}

static void drain_lru(void)
{
	posix_fadvise(drain_fd, 0, PG_SIZE, POSIX_FADV_DONTNEED);
}

/* One run at a time on this machine, with `pudthp conform`: the settings and the global
 * counters are machine-wide.  A descriptor of the lock inherited from
 * `flock /run/lock/pudthp-conform.lock ./repro` already holds it. */
static int take_lock(void)
{
	struct stat want, st;
	struct dirent *de;
	time_t deadline;
	DIR *d;
	int fd, said = 0;

	mkdir("/run/lock", 0755);
	fd = open(LOCK_PATH, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0 || fstat(fd, &want))
		return fail("cannot open %s: %s", LOCK_PATH, strerror(errno));
	d = opendir("/proc/self/fd");
	while (d && (de = readdir(d))) {
		int other = atoi(de->d_name);

		if (de->d_name[0] == '.' || other == fd || other == dirfd(d))
			continue;
		if (!fstat(other, &st) && st.st_dev == want.st_dev && st.st_ino == want.st_ino &&
		    !flock(other, LOCK_EX | LOCK_NB)) {
			closedir(d);
			close(fd);
			return 0;
		}
	}
	if (d)
		closedir(d);
	deadline = time(NULL) + LOCK_TIMEOUT_S;
	while (flock(fd, LOCK_EX | LOCK_NB)) {
		struct timespec ts = { 0, 50 * 1000 * 1000 };

		if (errno != EWOULDBLOCK && errno != EINTR)
			return fail("cannot lock %s: %s", LOCK_PATH, strerror(errno));
		if (time(NULL) > deadline)
			return fail("another run holds %s", LOCK_PATH);
		if (!said++)
			diag("waiting for %s (another run holds it)", LOCK_PATH);
		nanosleep(&ts, NULL);
	}
	return 0;
}

static int active_swaps(void)
{
	char buf[4096], *p;
	int r = read_text("/proc/swaps", buf, sizeof(buf)), n = 0;

	if (r < 0)
		return 0;
	p = strchr(buf, '\n'); /* the header line */
	while (p && p[1]) {
		n++;
		p = strchr(p + 1, '\n');
	}
	return n;
}

/*
 * What a killed run left changed, from the record (live.py restore_recorded): a small
 * reader of the record's JSON, then each entry undone, newest first, where it is still
 * needed.  Called with the lock held, before this run changes anything, so the values it
 * saves are the machine's own.
 */
struct json_in {
	const char *p, *end;
};

static void json_space(struct json_in *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\t' || *j->p == '\r'))
		j->p++;
}

static int json_char(struct json_in *j, char c)
{
	json_space(j);
	if (j->p < j->end && *j->p == c) {
		j->p++;
		return 1;
	}
	return 0;
}

/* A string of printable ASCII (escapes decoded) into out; -1 if not one that fits */
static int json_str(struct json_in *j, char *out, size_t size)
{
	size_t n = 0;

	if (!json_char(j, '"'))
		return -1;
	while (j->p < j->end && *j->p != '"') {
		char c = *j->p++;

		if (c == '\\') {
			unsigned int u;

			if (j->p >= j->end)
				return -1;
			c = *j->p++;
			if (c == 'u') {
				if (j->end - j->p < 4 || sscanf(j->p, "%4x", &u) != 1 || u < 0x20 ||
				    u > 0x7e)
					return -1;
				c = (char)u;
				j->p += 4;
			} else if (c != '"' && c != '\\' && c != '/') {
				return -1;
			}
		} else if ((unsigned char)c < 0x20 || (unsigned char)c > 0x7e) {
			return -1;
		}
		if (n + 1 >= size)
			return -1;
		out[n++] = c;
	}
	if (j->p >= j->end)
		return -1;
	j->p++;
	out[n] = 0;
	return 0;
}

/* Pass over one value (nested at most a few levels); -1 if there is none */
static int json_skip(struct json_in *j, int depth)
{
	char scratch[256];

	json_space(j);
	if (j->p >= j->end || depth > 8)
		return -1;
	if (*j->p == '"')
		return json_str(j, scratch, sizeof(scratch));
	if (*j->p == '{' || *j->p == '[') {
		char close = *j->p == '{' ? '}' : ']';

		j->p++;
		if (json_char(j, close))
			return 0;
		do {
			if (close == '}' && (json_str(j, scratch, sizeof(scratch)) ||
					     !json_char(j, ':')))
				return -1;
			if (json_skip(j, depth + 1))
				return -1;
		} while (json_char(j, ','));
		return json_char(j, close) ? 0 : -1;
	}
	while (j->p < j->end && strchr("-+.0123456789eEtruefalsn", *j->p) && *j->p)
		j->p++;
	return 0;
}

/* One entry: {"set": PATH, "old": VALUE} or {"undo": [ACTION, ARG]} */
static int json_entry(struct json_in *j, struct record_entry *e)
{
	char key[16];
	int have = 0;

	memset(e, 0, sizeof(*e));
	if (!json_char(j, '{'))
		return -1;
	do {
		if (json_str(j, key, sizeof(key)) || !json_char(j, ':'))
			return -1;
		if (!strcmp(key, "set")) {
			if (json_str(j, e->a, sizeof(e->a)))
				return -1;
			have |= 1;
		} else if (!strcmp(key, "old")) {
			if (json_str(j, e->b, sizeof(e->b)))
				return -1;
			have |= 2;
		} else if (!strcmp(key, "undo")) {
			if (!json_char(j, '[') || json_str(j, e->a, sizeof(e->a)) ||
			    !json_char(j, ',') || json_str(j, e->b, sizeof(e->b)) || !json_char(j, ']'))
				return -1;
			e->undo = 1;
			have |= 4;
		} else if (json_skip(j, 1)) {
			return -1;
		}
	} while (json_char(j, ','));
	if (!json_char(j, '}'))
		return -1;
	return have == 3 || have == 4 ? 0 : -1;
}

/* The record's entries into left (at most max); -1 when it is not a record */
static int read_record(const char *text, size_t len, struct record_entry *left, int max,
		       long *pid)
{
	struct json_in j = { text, text + len };
	char key[16], format[64];
	int n = 0, formatted = 0;

	*pid = 0;
	if (!json_char(&j, '{'))
		return -1;
	do {
		if (json_str(&j, key, sizeof(key)) || !json_char(&j, ':'))
			return -1;
		if (!strcmp(key, "format")) {
			if (json_str(&j, format, sizeof(format)) || strcmp(format, RECORD_FORMAT))
				return -1;
			formatted = 1;
		} else if (!strcmp(key, "pid")) {
			json_space(&j);
			*pid = strtol(j.p, NULL, 10);
			if (json_skip(&j, 1))
				return -1;
		} else if (!strcmp(key, "entries")) {
			if (!json_char(&j, '['))
				return -1;
			if (!json_char(&j, ']')) {
				do {
					if (n == max || json_entry(&j, &left[n]))
						return -1;
					n++;
				} while (json_char(&j, ','));
				if (!json_char(&j, ']'))
					return -1;
			}
		} else if (json_skip(&j, 1)) {
			return -1;
		}
	} while (json_char(&j, ','));
	return json_char(&j, '}') && formatted ? n : -1;
}

static int swap_active(const char *device)
{
	char buf[4096], *line;
	size_t n = strlen(device);

	if (read_text("/proc/swaps", buf, sizeof(buf)) < 0)
		return 0;
	for (line = strchr(buf, '\n'); line && line[1]; line = strchr(line + 1, '\n'))
		if (!strncmp(line + 1, device, n) && (line[1 + n] == ' ' || line[1 + n] == '\t'))
			return 1;
	return 0;
}

static int mounted(const char *path)
{
	struct sbuf mounts = { 0 };
	char want[300];
	int r;

	if (read_all("/proc/self/mounts", &mounts) < 0) {
		sb_free(&mounts);
		return 0;
	}
	snprintf(want, sizeof(want), " %s ", path);
	r = strstr(sb_str(&mounts), want) != NULL;
	sb_free(&mounts);
	return r;
}

/* Undo one recorded change if it is still in place; what was done into done */
static int undo_entry(const struct record_entry *e, struct sbuf *done)
{
	char buf[512], now[96], path[300];

	if (!e->undo) {
		if (read_text(e->a, buf, sizeof(buf)) < 0)
			return fail("cannot read %s", e->a);
		selected(buf, now, sizeof(now));
		if (strcmp(now, e->b)) {
			if (write_text(e->a, e->b))
				return fail("cannot set %s back to %s", e->a, e->b);
			sb_printf(done, "%s%s %s -> %s", done->len ? ", " : "", e->a, now, e->b);
		}
	} else if (!strcmp(e->a, "swapoff")) {
		if (swap_active(e->b)) {
			if (swapoff(e->b))
				return fail("swapoff %s: %s", e->b, strerror(errno));
			sb_printf(done, "%sswapoff %s", done->len ? ", " : "", e->b);
		}
	} else if (!strcmp(e->a, "zram_reset")) {
		if (strchr(e->b, '/'))
			return fail("not a zram device name: %s", e->b);
		snprintf(path, sizeof(path), "/sys/block/%s/disksize", e->b);
		if (read_text(path, buf, sizeof(buf)) >= 0 && strtoull(buf, NULL, 10)) {
			snprintf(path, sizeof(path), "/sys/block/%s/reset", e->b);
			if (write_text(path, "1"))
				return fail("cannot reset /dev/%s", e->b);
			sb_printf(done, "%sreset /dev/%s", done->len ? ", " : "", e->b);
		}
	} else if (!strcmp(e->a, "umount")) {
		if (mounted(e->b)) {
			if (umount2(e->b, 0))
				return fail("umount %s: %s", e->b, strerror(errno));
			sb_printf(done, "%sumount %s", done->len ? ", " : "", e->b);
		}
	} else {
		return fail("unknown step %s", e->a);
	}
	return 0;
}

/* Remove the temporary record files of writers that are gone (killed before the rename) */
static void remove_stale_records(void)
{
	static const char base[] = "conform-settings.json.";
	DIR *d = opendir(RECORD_DIR);
	struct dirent *de;
	char path[320], *end;
	long pid;

	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, base, sizeof(base) - 1))
			continue;
		pid = strtol(de->d_name + sizeof(base) - 1, &end, 10);
		if (pid <= 0 || strcmp(end, ".tmp") || !kill((pid_t)pid, 0) || errno == EPERM)
			continue;
		snprintf(path, sizeof(path), RECORD_DIR "/%s", de->d_name);
		unlink(path);
	}
	if (d)
		closedir(d);
}

/* Put back what a killed run recorded; -1 (err says what) if anything could not be */
static int restore_leftover(void)
{
	static struct record_entry left[MAX_RECORD * 4];
	struct sbuf text = { 0 }, done = { 0 };
	long pid;
	int r, n, i;

	remove_stale_records();
	r = read_all(RECORD_PATH, &text);
	if (r == -ENOENT) {
		sb_free(&text);
		return 0;
	}
	if (r < 0) {
		sb_free(&text);
		return fail("cannot read %s: %s", RECORD_PATH, strerror(-r));
	}
	n = text.len > 1 << 20 ? -1 : read_record(sb_str(&text), text.len, left,
						   (int)(sizeof(left) / sizeof(left[0])), &pid);
	sb_free(&text);
	if (n < 0)
		return fail("%s is not a %s record; check the THP knobs by hand, then delete it",
			    RECORD_PATH, RECORD_FORMAT);
	for (i = n - 1; i >= 0; i--) {
		if (undo_entry(&left[i], &done)) {
			sb_free(&done);
			return fail("could not restore what a killed run (pid %ld) left: %s", pid, err);
		}
	}
	if (unlink(RECORD_PATH) && errno != ENOENT) {
		sb_free(&done);
		return fail("cannot remove %s: %s", RECORD_PATH, strerror(errno));
	}
	diag("restored what a killed run (pid %ld) left: %s", pid,
	     done.len ? sb_str(&done) : "nothing had changed");
	sb_free(&done);
	return 0;
}

/*
 * A swap device of prog.swap_pages usable pages on zram (plus the header page).  zram is a
 * SWP_SYNCHRONOUS_IO device: MADV_PAGEOUT writes the folio and frees it within the call,
 * as the model's synchronous reclaim does, and a swap-in of a slot mapped once bypasses
 * the swap cache.  The swap header is written here (struct swap_header, version 1).
 */
static int swap_setup(void)
{
	char text[32];
	unsigned char *page;
	uint32_t last_page = (uint32_t)prog.swap_pages, version = 1;
	int fd, r;

	if (!prog.swap_pages)
		return 0;
	if (record_add(1, "zram_reset", "zram0"))
		return -1;
	zram_sized = 1;
	snprintf(text, sizeof(text), "%lu", (prog.swap_pages + 1) * PG_SIZE);
	r = write_text(ZRAM_SYS "/disksize", text);
	if (r)
		return fail("cannot size " ZRAM_DEV ": %s", strerror(-r));
	page = xcalloc(1, PG_SIZE);
	memcpy(page + 1024, &version, 4);
	memcpy(page + 1028, &last_page, 4);
	memcpy(page + PG_SIZE - 10, "SWAPSPACE2", 10);
	fd = open(ZRAM_DEV, O_WRONLY | O_CLOEXEC);
	r = fd >= 0 && pwrite(fd, page, PG_SIZE, 0) == (ssize_t)PG_SIZE && !fsync(fd);
	if (fd >= 0)
		close(fd);
	free(page);
	if (!r)
		return fail("cannot write the swap header on " ZRAM_DEV ": %s", strerror(errno));
	if (record_add(1, "swapoff", ZRAM_DEV))
		return -1;
	swap_on = 1;
	if (swapon(ZRAM_DEV, 0))
		return fail("swapon " ZRAM_DEV ": %s", strerror(errno));
	return 0;
}

/* Why split_huge_pages cannot be written here, or NULL.  debugfs is mounted if it is not
 * (unmounted at the end); under kernel lockdown every debugfs write is refused. */
static const char *split_huge_pages_problem(void)
{
	static char why[160];
	int fd;

	if (!exists(SPLIT_HUGE_PAGES)) {
		if (record_add(1, "umount", DEBUGFS))
			return err;
		if (mount("none", DEBUGFS, "debugfs", 0, NULL)) {
			snprintf(why, sizeof(why), "debugfs cannot be mounted: %s", strerror(errno));
			return why;
		}
		debugfs_mounted = 1;
		if (!exists(SPLIT_HUGE_PAGES))
			return "debugfs has no split_huge_pages file";
	}
	fd = open(SPLIT_HUGE_PAGES, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		close(fd);
		return NULL;
	}
	if (errno == EPERM)
		return "debugfs split_huge_pages cannot be written: the kernel is locked down "
		       "(LOCKDOWN_DEBUGFS)";
	snprintf(why, sizeof(why), "debugfs split_huge_pages cannot be opened: %s",
		 strerror(errno));
	return why;
}

/* NUMA nodes: the kernel node of model node i is the i-th online node */
static int node_ids[MAX_NODE_BITS];
static int nnodes;

static void read_nodes(void)
{
	char buf[512], *p = buf;
	int r = read_text("/sys/devices/system/node/online", buf, sizeof(buf));

	nnodes = 0;
	if (r <= 0) {
		node_ids[nnodes++] = 0;
		return;
	}
	while (*p && *p != '\n' && nnodes < MAX_NODE_BITS) {
		long lo = strtol(p, &p, 10), hi = lo;

		if (*p == '-')
			hi = strtol(p + 1, &p, 10);
		while (lo <= hi && nnodes < MAX_NODE_BITS)
			node_ids[nnodes++] = (int)lo++;
		if (*p == ',')
			p++;
		else
			break;
	}
}

/* -------------------------------------------------------------------------------------- */
/* Global counters                                                                        */
/* -------------------------------------------------------------------------------------- */

static int counter_shown[sizeof(counters) / sizeof(counters[0])]; /* on this kernel */
static struct sbuf vmstat_text;

/* A field of /proc/vmstat as read last into vmstat_text: 1 found, 0 not */
static int vmstat_field(const char *field, long long *v)
{
	size_t n = strlen(field);
	const char *p = vmstat_text.s;

	*v = 0;
	while (p && *p) {
		if (!strncmp(p, field, n) && p[n] == ' ') {
			*v = strtoll(p + n + 1, NULL, 10);
			return 1;
		}
		p = strchr(p, '\n');
		p = p ? p + 1 : NULL;
	}
	return 0;
}

static int read_counters(long long *v)
{
	char buf[64];
	int i, r;

	r = read_all("/proc/vmstat", &vmstat_text);
	if (r)
		return fail("/proc/vmstat: %s", strerror(-r));
	for (i = 0; i < NCOUNTERS; i++) {
		v[i] = 0;
		if (counters[i].field[0]) {
			vmstat_field(counters[i].field, &v[i]);
		} else if (counter_shown[i]) {
			r = read_text(counters[i].path, buf, sizeof(buf));
			if (r < 0)
				return fail("%s: %s", counters[i].path, strerror(-r));
			v[i] = strtoll(buf, NULL, 10);
		}
	}
	return 0;
}

static void find_counters(void)
{
	long long v;
	int i;

	read_all("/proc/vmstat", &vmstat_text);
	for (i = 0; i < NCOUNTERS; i++) {
		if (counters[i].field[0]) {
			counter_shown[i] = vmstat_field(counters[i].field, &v);
		} else {
			counter_shown[i] = exists(counters[i].path);
		}
		if (!counter_shown[i] && !counters[i].noise)
			diag("this kernel has no %s: not compared", counters[i].name);
	}
}

static int counter_index(const char *name)
{
	int i;

	for (i = 0; i < NCOUNTERS; i++)
		if (!strcmp(counters[i].name, name))
			return i;
	return -1;
}

/* -------------------------------------------------------------------------------------- */
/* The huge zero folio held outside the run (live.py huge_zero_folio_held_elsewhere)      */
/* -------------------------------------------------------------------------------------- */

/*
 * In a fresh child of this process: a read fault on a 2 MiB-aligned anonymous range with
 * MADV_HUGEPAGE.  1 when a huge zero PMD maps it now (the child's mm then holds the huge
 * zero folio until it exits, mm_get_huge_zero_folio()), else 0.
 */
static int map_huge_zero_pmd(void)
{
	struct scan_region region;
	struct scan_arg a;
	uintptr_t addr;
	char *area;
	long r;
	int fd;

	prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0); /* this process set it for itself */
	area = mmap(NULL, 2 * THP_NR * PG_SIZE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED)
		return 0;
	addr = ((uintptr_t)area + THP_NR * PG_SIZE - 1) & ~(uintptr_t)(THP_NR * PG_SIZE - 1);
	madvise((void *)addr, THP_NR * PG_SIZE, MADV_HUGEPAGE);
	(void)*(volatile uint64_t *)addr;
	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.start = addr;
	a.end = addr + PG_SIZE;
	a.vec = (uint64_t)(uintptr_t)&region;
	a.vec_len = 1;
	a.return_mask = SCAN_CATEGORIES;
	r = ioctl(fd, PAGEMAP_SCAN_IOCTL, &a);
	close(fd);
	return r == 1 && (region.categories & SCAN_PFNZERO) && (region.categories & SCAN_HUGE);
}

/*
 * Does a process outside the run hold the huge zero folio?  Then the kernel never
 * allocates it for the program (no thp_zero_page_alloc where a model that allocates it on
 * the first huge zero PMD counts one).  Asked with no process of the run alive: at a run's
 * start, and after the runs for a disagreement that would rest on it.
 *
 * After drop_caches the folio is gone unless some mm holds it (the huge zero folio's
 * shrinker, shrink_huge_zero_folio_scan()); a fresh process's huge zero PMD then allocates
 * it (thp_zero_page_alloc +1) exactly when nobody else holds it.  1 held, 0 not, -1 when
 * no huge zero PMD could be mapped (THP or the huge zero page off: then the program maps
 * none either), -2 when the probe could not run (err says why).  A last drop_caches frees
 * what the probe allocated.
 */
static int huge_zero_held_elsewhere(void)
{
	long long before, after;
	char c = '0', rest;
	int pfd[2], ok;
	pid_t pid;

	if (drop_slab())
		return -2;
	if (read_all("/proc/vmstat", &vmstat_text) || !vmstat_field("thp_zero_page_alloc", &before))
		return fail("/proc/vmstat has no thp_zero_page_alloc"), -2;
	if (pipe2(pfd, O_CLOEXEC))
		return fail("pipe: %s", strerror(errno)), -2;
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		fail("fork: %s", strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		return -2;
	}
	if (pid == 0) {
		close(pfd[0]);
		c = map_huge_zero_pmd() ? '1' : '0';
		if (write(pfd[1], &c, 1) != 1)
			_exit(1);
		_exit(0);
	}
	close(pfd[1]);
	ok = read(pfd[0], &c, 1) == 1 && c == '1';
	/* End of file comes when the child's files are closed in do_exit(), after exit_mm()
	 * gave up its mm and with it the child's reference to the huge zero folio */
	while (read(pfd[0], &rest, 1) > 0)
		;
	close(pfd[0]);
	waitpid(pid, NULL, 0); /* SIGCHLD is ignored: it is reaped already, or now */
	if (read_all("/proc/vmstat", &vmstat_text) ||
	    !vmstat_field("thp_zero_page_alloc", &after))
		return fail("/proc/vmstat has no thp_zero_page_alloc"), -2;
	if (drop_slab())
		return -2;
	return ok ? after == before : -1;
}

/* -------------------------------------------------------------------------------------- */
/* Observation of the kernel's state (observe.py)                                         */
/* -------------------------------------------------------------------------------------- */

struct kpage {
	unsigned long vpn;
	int kind;
	uint64_t folio;            /* head PFN (pte, pmd) */
	uint64_t index, mapcount, content, slot;
	int order;
};

struct kvma {
	unsigned long start, end;  /* pages from the window base */
	int prot, flags;
};

struct kmm {
	int alive;
	int nvmas;
	struct kvma *vmas;
	long rss, anon_huge, swap;
	size_t npages;
	struct kpage *pages;
};

struct obs {
	struct kmm *mm;            /* by mm id, prog.nmms of them */
};

static int kflags_fd = -1, kcount_fd = -1;
static struct sbuf smaps_text;

static void obs_clear(struct obs *o)
{
	int i;

	if (!o->mm)
		o->mm = xcalloc(prog.nmms, sizeof(*o->mm));
	for (i = 0; i < prog.nmms; i++) {
		free(o->mm[i].vmas);
		free(o->mm[i].pages);
		memset(&o->mm[i], 0, sizeof(o->mm[i]));
	}
}

static int read_u64(int fd, uint64_t index, uint64_t *v, const char *what)
{
	if (pread(fd, v, 8, (off_t)(index * 8)) != 8)
		return fail("cannot read %s at %#llx: %s", what, (unsigned long long)index,
			    strerror(errno));
	return 0;
}

/* (head PFN, order) of the folio holding pfn: order 0 unless compound; a tail's head is
 * found by KPF_COMPOUND_HEAD, the order-9 aligned PFN first (only 2 MiB THPs are on) */
static int head_of(uint64_t pfn, uint64_t flags, uint64_t *head, int *order)
{
	uint64_t cand, f;
	unsigned long i;

	*head = pfn;
	*order = 0;
	if (flags >> KPF_COMPOUND_HEAD & 1) {
		*order = THP_ORDER;
		return 0;
	}
	if (!(flags >> KPF_COMPOUND_TAIL & 1))
		return 0;
	cand = pfn & ~(uint64_t)(THP_NR - 1);
	if (read_u64(kflags_fd, cand, &f, "/proc/kpageflags"))
		return -1;
	if (f >> KPF_COMPOUND_HEAD & 1) {
		*head = cand;
		*order = THP_ORDER;
		return 0;
	}
	for (i = 1; i < THP_NR && i <= pfn; i++) {
		if (read_u64(kflags_fd, pfn - i, &f, "/proc/kpageflags"))
			return -1;
		if (f >> KPF_COMPOUND_HEAD & 1) {
			*head = pfn - i;
			*order = THP_ORDER;
			return 0;
		}
	}
	return fail("no compound head found for PFN %#llx", (unsigned long long)pfn);
}

/* Every page of one VMA [start, end) (addresses), appended to km->pages */
static int observe_pages(struct proc *pr, int mm, struct kmm *km, unsigned long start,
			 unsigned long end)
{
	static struct scan_region regions[SCAN_VEC_LEN];
	size_t n = (end - start) / PG_SIZE, i, first = km->npages;
	uint64_t *cats = xcalloc(n, sizeof(uint64_t)), *ent = xcalloc(n, sizeof(uint64_t));
	unsigned long cur = start;
	int ret = -1;

	while (cur < end) {
		struct scan_arg a;
		long r, j;

		memset(&a, 0, sizeof(a));
		a.size = sizeof(a);
		a.start = cur;
		a.end = end;
		a.vec = (uint64_t)(uintptr_t)regions;
		a.vec_len = SCAN_VEC_LEN;
		a.return_mask = SCAN_CATEGORIES;
		r = ioctl(pr->pagemap_fd, PAGEMAP_SCAN_IOCTL, &a);
		if (r < 0) {
			fail("PAGEMAP_SCAN failed: %s", strerror(errno));
			goto out;
		}
		for (j = 0; j < r; j++) {
			uint64_t p;

			for (p = regions[j].start; p < regions[j].end; p += PG_SIZE)
				if (p >= start && p < end)
					cats[(p - start) / PG_SIZE] = regions[j].categories;
		}
		if (a.walk_end <= cur) {
			fail("PAGEMAP_SCAN made no progress at %#lx", cur);
			goto out;
		}
		cur = a.walk_end;
	}
	if (pread(pr->pagemap_fd, ent, n * 8, (off_t)(start / PG_SIZE * 8)) != (ssize_t)(n * 8)) {
		fail("short pagemap read at %#lx", start);
		goto out;
	}
	km->pages = xrealloc(km->pages, (first + n) * sizeof(struct kpage));
	for (i = 0; i < n; i++) {
		struct kpage *p = &km->pages[first + i];
		uint64_t c = cats[i], e = ent[i];

		memset(p, 0, sizeof(*p));
		p->vpn = (start - WINDOW_BASE) / PG_SIZE + i;
		if (c & SCAN_PRESENT) {
			if (!(e & PM_PRESENT)) {
				fail("pagemap and PAGEMAP_SCAN disagree at %#lx", start + i * PG_SIZE);
				goto out;
			}
			if (c & SCAN_PFNZERO) {
				p->kind = c & SCAN_HUGE ? K_HZERO : K_ZERO;
			} else {
				uint64_t pfn = e & PM_PFN_MASK, flags;

				p->kind = c & SCAN_HUGE ? K_PMD : K_PTE;
				if (read_u64(kflags_fd, pfn, &flags, "/proc/kpageflags") ||
				    head_of(pfn, flags, &p->folio, &p->order) ||
				    read_u64(kcount_fd, pfn, &p->mapcount, "/proc/kpagecount"))
					goto out;
				p->index = pfn - p->folio;
			}
		} else if (c & SCAN_SWAPPED) {
			p->kind = K_SWAP;
			p->slot = (e & PM_PFN_MASK) >> PM_SWAP_OFFSET_SHIFT;
		} else {
			p->kind = K_NONE;
		}
	}
	/* The first word of every present page (a GUP read maps or changes nothing; pages not
	 * present are never read, which would fault them in) */
	for (i = 0; i < n; i++) {
		struct kpage *p = &km->pages[first + i];

		if (p->kind == K_NONE || p->kind == K_SWAP)
			continue;
		if (pread(pr->mem_fd, &p->content, 8, (off_t)(start + i * PG_SIZE)) != 8) {
			fail("mm %d: cannot read the page at %#lx", mm, start + i * PG_SIZE);
			goto out;
		}
	}
	km->npages = first + n;
	ret = 0;
out:
	free(cats);
	free(ent);
	return ret;
}

static int prot_of(const char *perms, int *prot)
{
	if (!strncmp(perms, "---", 3))
		*prot = PROT_NONE;
	else if (!strncmp(perms, "r--", 3))
		*prot = PROT_READ;
	else if (!strncmp(perms, "rw-", 3))
		*prot = PROT_READ | PROT_WRITE;
	else
		return -1;
	return perms[3] == 'p' ? 0 : -1;
}

/* One live mm: the VMAs in the window from smaps (maps for a PUD program), and its pages */
static int observe_mm(int mm, struct kmm *km)
{
	struct proc *pr = &procs[mm];
	unsigned long wend = WINDOW_BASE + prog.window_pages * PG_SIZE, lo = 0, hi = 0;
	char path[64], *line, *next;
	long rss_kb = 0, anon_kb = 0, swap_kb = 0;
	int in = 0, prot = 0, flags = 0, r;

	km->alive = 1;
	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pr->pid, prog.pud ? "maps" : "smaps");
	r = read_all(path, &smaps_text);
	if (r)
		return fail("%s: %s", path, strerror(-r));
	for (line = smaps_text.s;; line = next) {
		int header = !*line || (*line >= '0' && *line <= '9') || (*line >= 'a' && *line <= 'f');

		next = *line ? strchr(line, '\n') : NULL;
		next = next ? next + 1 : line + strlen(line);
		if (header && in) { /* the VMA before is complete */
			struct kvma *v;

			km->vmas = xrealloc(km->vmas, (km->nvmas + 1) * sizeof(*v));
			v = &km->vmas[km->nvmas++];
			v->start = (lo - WINDOW_BASE) / PG_SIZE;
			v->end = (hi - WINDOW_BASE) / PG_SIZE;
			v->prot = prot;
			v->flags = flags;
			km->rss += rss_kb * 1024 / PG_SIZE;
			km->anon_huge += anon_kb * 1024 / PG_SIZE;
			km->swap += swap_kb * 1024 / PG_SIZE;
			if (!prog.pud && observe_pages(pr, mm, km, lo, hi))
				return -1;
			in = 0;
		}
		if (!*line)
			break;
		if (header) {
			char perms[8] = "";

			if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
				return fail("mm %d: cannot parse %s: %.40s", mm, path, line);
			if (lo >= wend || hi <= WINDOW_BASE)
				continue;
			if (lo < WINDOW_BASE || hi > wend)
				return fail("mm %d: a VMA crosses the window edge: %.60s", mm, line);
			if (prot_of(perms, &prot))
				return fail("mm %d: unexpected VMA permissions %s", mm, perms);
			in = 1;
			flags = 0;
			rss_kb = anon_kb = swap_kb = 0;
		} else if (in && !strncmp(line, "Rss:", 4)) {
			rss_kb = strtol(line + 4, NULL, 10);
		} else if (in && !strncmp(line, "AnonHugePages:", 14)) {
			anon_kb = strtol(line + 14, NULL, 10);
		} else if (in && !strncmp(line, "Swap:", 5)) {
			swap_kb = strtol(line + 5, NULL, 10);
		} else if (in && !strncmp(line, "VmFlags:", 8)) {
			const char *f;

			for (f = line + 8; f < next; f += 3) {
				while (*f == ' ')
					f++;
				if (!strncmp(f, "hg", 2) && (f[2] == ' ' || f[2] == '\n'))
					flags |= VMA_HG;
				if (!strncmp(f, "nh", 2) && (f[2] == ' ' || f[2] == '\n'))
					flags |= VMA_NH;
			}
		}
	}
	return 0;
}

static int observe(struct obs *o)
{
	int i;

	obs_clear(o);
	for (i = 0; i < nprocs; i++)
		if (procs[i].alive && observe_mm(i, &o->mm[i]))
			return -1;
	return 0;
}

/* How many of the program's THPs an op split: those with a page mapped before that is now
 * an order-0 page at the same PFN, or the zero page (a zero-filled subpage is remapped to
 * it).  Counted from the program's own pages, not from the global split counter, which
 * the shrinker also moves for other processes' folios. */
static long folios_split(const struct obs *before, const struct obs *after)
{
	uint64_t *seen = NULL;
	long nseen = 0, i, j;
	int mm;

	for (mm = 0; mm < prog.nmms; mm++) {
		const struct kmm *b = &before->mm[mm], *a = &after->mm[mm];
		size_t x, y = 0;

		if (!b->alive || !a->alive)
			continue;
		for (x = 0; x < b->npages; x++) {
			const struct kpage *p = &b->pages[x], *q;

			if ((p->kind != K_PTE && p->kind != K_PMD) || p->order != THP_ORDER)
				continue;
			for (j = 0; j < nseen && seen[j] != p->folio; j++)
				;
			if (j < nseen)
				continue;
			while (y < a->npages && a->pages[y].vpn < p->vpn)
				y++;
			if (y >= a->npages || a->pages[y].vpn != p->vpn)
				continue;
			q = &a->pages[y];
			if (q->kind == K_ZERO || ((q->kind == K_PTE || q->kind == K_PMD) &&
						  q->order == 0 && q->folio == p->folio + p->index)) {
				seen = xrealloc(seen, (nseen + 1) * sizeof(*seen));
				seen[nseen++] = p->folio;
			}
		}
	}
	i = nseen;
	free(seen);
	return i;
}

/* -------------------------------------------------------------------------------------- */
/* Comparison with the model (observe.py compare)                                         */
/* -------------------------------------------------------------------------------------- */

/* Names replaced by labels in order of first appearance (folio head PFNs, swap slots) */
struct labels {
	uint64_t *keys;
	long *vals;
	size_t cap, n;
};

static void labels_reset(struct labels *l)
{
	free(l->keys);
	free(l->vals);
	memset(l, 0, sizeof(*l));
}

static long label_of(struct labels *l, uint64_t key)
{
	size_t i;

	if (2 * (l->n + 1) > l->cap) {
		struct labels old = *l;

		l->cap = l->cap ? 2 * l->cap : 1024;
		l->keys = xcalloc(l->cap, sizeof(uint64_t));
		l->vals = xcalloc(l->cap, sizeof(long));
		l->n = 0;
		for (i = 0; i < old.cap; i++) {
			if (old.vals[i]) {
				size_t k = (old.keys[i] * 0x9E3779B97F4A7C15ULL) & (l->cap - 1);

				while (l->vals[k])
					k = (k + 1) & (l->cap - 1);
				l->keys[k] = old.keys[i];
				l->vals[k] = old.vals[i];
				l->n++;
			}
		}
		free(old.keys);
		free(old.vals);
	}
	i = (key * 0x9E3779B97F4A7C15ULL) & (l->cap - 1);
	while (l->vals[i]) { /* values are stored as label + 1 */
		if (l->keys[i] == key)
			return l->vals[i] - 1;
		i = (i + 1) & (l->cap - 1);
	}
	l->keys[i] = key;
	l->vals[i] = (long)++l->n;
	return l->vals[i] - 1;
}

/* A page as both sides show it: which fields its kind has, and their values */
enum { F_FOLIO, F_INDEX, F_ORDER, F_MAPCOUNT, F_CONTENT, F_SLOT, NFIELDS };
static const char *const field_names[] = { "folio", "index", "order", "mapcount",
					   "content", "slot" };
struct pv {
	int kind;
	int has[NFIELDS];
	uint64_t v[NFIELDS];
};

static void pv_fields(struct pv *p)
{
	int present = p->kind == K_PTE || p->kind == K_PMD;

	memset(p->has, 0, sizeof(p->has));
	p->has[F_FOLIO] = p->has[F_INDEX] = p->has[F_ORDER] = p->has[F_MAPCOUNT] = present;
	p->has[F_CONTENT] = present || p->kind == K_ZERO || p->kind == K_HZERO;
	p->has[F_SLOT] = p->kind == K_SWAP;
}

static void model_page(const struct page_run *r, unsigned long j, struct pv *p)
{
	int present = r->kind == K_PTE || r->kind == K_PMD;

	memset(p, 0, sizeof(*p));
	p->kind = r->kind;
	pv_fields(p);
	p->v[F_FOLIO] = r->folio + (present && r->order == 0 ? j : 0);
	p->v[F_INDEX] = r->index + (present && r->order > 0 ? j : 0);
	p->v[F_ORDER] = r->order;
	p->v[F_MAPCOUNT] = r->mapcount;
	p->v[F_CONTENT] = r->content;
	p->v[F_SLOT] = r->slot + (r->kind == K_SWAP ? j : 0);
}

static void kernel_page(const struct kpage *k, struct labels *folios, struct labels *slots,
			struct pv *p)
{
	memset(p, 0, sizeof(*p));
	p->kind = k->kind;
	pv_fields(p);
	if (p->has[F_FOLIO])
		p->v[F_FOLIO] = label_of(folios, k->folio);
	p->v[F_INDEX] = k->index;
	p->v[F_ORDER] = k->order;
	p->v[F_MAPCOUNT] = k->mapcount;
	p->v[F_CONTENT] = k->content;
	if (p->has[F_SLOT])
		p->v[F_SLOT] = label_of(slots, k->slot);
}

/* One difference: "observable: kernel X, model Y", and the observable's class */
struct diff {
	struct sbuf text;
	char cls[64];
};

static void diff_set(struct diff *d, const char *cls, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void diff_set(struct diff *d, const char *cls, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	d->text.len = 0;
	sb_printf(&d->text, "%s", buf);
	snprintf(d->cls, sizeof(d->cls), "%s", cls);
}

static void pv_text(const struct pv *p, int f, char *out, size_t size)
{
	if (!p->has[f])
		snprintf(out, size, "null");
	else
		snprintf(out, size, "%llu", (unsigned long long)p->v[f]);
}

static const char *prot_name(int prot)
{
	return prot == PROT_NONE ? "none" : prot == PROT_READ ? "r" : "rw";
}

static void vmas_text(struct sbuf *b, const struct kvma *kv, const struct vma_expect *mv,
		      int n)
{
	int i;

	sb_printf(b, "[");
	for (i = 0; i < n; i++) {
		unsigned long s = kv ? kv[i].start : mv[i].start, e = kv ? kv[i].end : mv[i].end;
		int prot = kv ? kv[i].prot : mv[i].prot, fl = kv ? kv[i].flags : mv[i].flags;

		sb_printf(b, "%s[%lu, %lu, \"%s\"", i ? ", " : "", s, e, prot_name(prot));
		if (!prog.pud)
			sb_printf(b, ", [%s%s%s]", fl & VMA_HG ? "\"hugepage\"" : "",
				  (fl & VMA_HG) && (fl & VMA_NH) ? ", " : "",
				  fl & VMA_NH ? "\"nohugepage\"" : "");
		sb_printf(b, "]");
	}
	sb_printf(b, "]");
}

static const struct mm_expect first_mm = { 0, NULL, 0, 0, 0, 0, NULL, 0 };

/* The first observable where the kernel differs from the model, in observe.py's order */
static int compare(const struct obs *o, const struct mm_expect *mms, int nmms, struct diff *d)
{
	struct labels folios = { 0 }, slots = { 0 };
	int mm, found = 0;

	for (mm = 0; mm < prog.nmms && !found; mm++) {
		const struct kmm *k = mm < nprocs && procs[mm].alive ? &o->mm[mm] : NULL;
		const struct mm_expect *e = NULL;
		unsigned long np = 0;
		size_t x = 0;
		int i, r;

		for (i = 0; i < nmms; i++)
			if (mms[i].mm == mm)
				e = &mms[i];
		if (!k && !e)
			continue;
		if (!k || !e) {
			diff_set(d, "alive", "mm%d.alive: kernel %s, model %s", mm,
				 k ? "true" : "false", e ? "true" : "false");
			found = 1;
			break;
		}
		r = k->nvmas != e->nvmas;
		for (i = 0; !r && i < k->nvmas; i++)
			r = k->vmas[i].start != e->vmas[i].start || k->vmas[i].end != e->vmas[i].end ||
			    k->vmas[i].prot != e->vmas[i].prot ||
			    (!prog.pud && k->vmas[i].flags != e->vmas[i].flags);
		if (r) {
			struct sbuf a = { 0 }, b = { 0 };

			vmas_text(&a, k->vmas, NULL, k->nvmas);
			vmas_text(&b, NULL, e->vmas, e->nvmas);
			d->text.len = 0;
			sb_printf(&d->text, "mm%d.vmas: kernel %s, model %s", mm, sb_str(&a),
				  sb_str(&b));
			snprintf(d->cls, sizeof(d->cls), "vmas");
			sb_free(&a);
			sb_free(&b);
			found = 1;
			break;
		}
		if (prog.pud)
			continue;
		if (k->rss != e->rss) {
			diff_set(d, "rss", "mm%d.rss: kernel %ld, model %ld", mm, k->rss, e->rss);
			found = 1;
		} else if (k->anon_huge != e->anon_huge) {
			diff_set(d, "anon_huge", "mm%d.anon_huge: kernel %ld, model %ld", mm,
				 k->anon_huge, e->anon_huge);
			found = 1;
		} else if (k->swap != e->swap) {
			diff_set(d, "swap", "mm%d.swap: kernel %ld, model %ld", mm, k->swap, e->swap);
			found = 1;
		}
		if (found)
			break;
		for (i = 0; i < e->nruns; i++)
			np += e->runs[i].n;
		if (k->npages != np) {
			diff_set(d, "npages", "mm%d.npages: kernel %zu, model %lu", mm, k->npages, np);
			found = 1;
			break;
		}
		for (i = 0; i < e->nruns && !found; i++) {
			unsigned long j;

			for (j = 0; j < e->runs[i].n && !found; j++, x++) {
				const struct kpage *kp = &k->pages[x];
				struct pv kv, mv;
				int f;

				kernel_page(kp, &folios, &slots, &kv);
				model_page(&e->runs[i], j, &mv);
				if (kp->vpn != e->runs[i].vpn + j) {
					diff_set(d, "page.vpn", "mm%d.page[%lu].vpn: kernel %lu, model %lu",
						 mm, kp->vpn, kp->vpn, e->runs[i].vpn + j);
					found = 1;
					break;
				}
				if (kv.kind != mv.kind) {
					diff_set(d, "page.kind", "mm%d.page[%lu].kind: kernel \"%s\", "
						 "model \"%s\"", mm, kp->vpn, kind_names[kv.kind],
						 kind_names[mv.kind]);
					found = 1;
					break;
				}
				for (f = 0; f < NFIELDS; f++) {
					char a[32], b[32], cls[32];

					if (kv.has[f] == mv.has[f] && (!kv.has[f] || kv.v[f] == mv.v[f]))
						continue;
					pv_text(&kv, f, a, sizeof(a));
					pv_text(&mv, f, b, sizeof(b));
					snprintf(cls, sizeof(cls), "page.%s", field_names[f]);
					diff_set(d, cls, "mm%d.page[%lu].%s: kernel %s, model %s", mm,
						 kp->vpn, field_names[f], a, b);
					found = 1;
					break;
				}
			}
		}
	}
	labels_reset(&folios);
	labels_reset(&slots);
	return found;
}

/* -------------------------------------------------------------------------------------- */
/* One op on the live kernel                                                              */
/* -------------------------------------------------------------------------------------- */

static uint64_t addr_of(unsigned long vpn)
{
	return WINDOW_BASE + (uint64_t)vpn * PG_SIZE;
}

/* Beyond the window the model answers without looking; here nothing may be mapped there
 * either (an access would touch this program's own memory) */
static int outside_window(int mm, unsigned long vpn, int *mapped)
{
	char path[64], *line;
	unsigned long long addr = (unsigned long long)vpn * PG_SIZE;
	int r;

	*mapped = 0;
	if (vpn >= (1UL << 52) / PG_SIZE || addr >= (1ULL << 47) - WINDOW_BASE)
		return 0; /* not a user address at all */
	addr += WINDOW_BASE;
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)procs[mm].pid);
	r = read_all(path, &smaps_text);
	if (r)
		return fail("%s: %s", path, strerror(-r));
	for (line = smaps_text.s; line && *line;) {
		unsigned long lo, hi;

		if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && lo <= addr && addr < hi)
			*mapped = 1;
		line = strchr(line, '\n');
		line = line ? line + 1 : NULL;
	}
	if (*mapped)
		return fail("page %lu is outside the model's address space but mapped in the "
			    "process", vpn);
	return 0;
}

/* Is a large folio mapped at addr (a THP's page, not the zero page)? */
static int thp_mapped(struct proc *pr, uint64_t addr, int *large)
{
	static struct scan_region region;
	struct scan_arg a;
	uint64_t e, flags;
	long r;

	*large = 0;
	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.start = addr;
	a.end = addr + PG_SIZE;
	a.vec = (uint64_t)(uintptr_t)&region;
	a.vec_len = 1;
	a.return_mask = SCAN_CATEGORIES;
	r = ioctl(pr->pagemap_fd, PAGEMAP_SCAN_IOCTL, &a);
	if (r < 0)
		return fail("PAGEMAP_SCAN failed: %s", strerror(errno));
	if (r == 0 || !(region.categories & SCAN_PRESENT) || region.categories & SCAN_PFNZERO)
		return 0;
	if (pread(pr->pagemap_fd, &e, 8, (off_t)(addr / PG_SIZE * 8)) != 8)
		return fail("short pagemap read at %#llx", (unsigned long long)addr);
	if (read_u64(kflags_fd, e & PM_PFN_MASK, &flags, "/proc/kpageflags"))
		return -1;
	*large = (flags >> KPF_COMPOUND_HEAD & 1) || (flags >> KPF_COMPOUND_TAIL & 1);
	return 0;
}

static int pmd_split_count(long long *v)
{
	char buf[64];
	int r = read_text(PMD_DIR "/stats/split", buf, sizeof(buf));

	if (r < 0)
		return fail(PMD_DIR "/stats/split: %s", strerror(-r));
	*v = strtoll(buf, NULL, 10);
	return 0;
}

/* Run step s; its result as pudthp spells results.  An op that looks at the kernel's
 * state itself (shrink_deferred) leaves that look in *seen and sets *took. */
static int apply(int i, const struct step *s, const struct obs *prev, struct obs *seen,
		 int *took, char *res, size_t size, struct sbuf *notes)
{
	struct request rq;
	struct reply rp;
	int mm = s->mm, mapped;

	*took = 0;
	memset(&rq, 0, sizeof(rq));
	if (s->op == OP_SHRINK_DEFERRED) {
		if (drop_slab() || observe(seen))
			return -1;
		*took = 1;
		if (prog.pud) {
			sb_printf(notes, "note: op %d: how many folios shrink_deferred split is not "
				  "observed in a PUD program (a page walk would split PUD leaves); "
				  "the counters are compared\n", i);
			snprintf(res, size, "%s", s->result);
		} else {
			snprintf(res, size, "%ld", folios_split(prev, seen));
		}
		return 0;
	}
	if (s->op == OP_UNPIN) {
		int k;

		for (k = 0; k < npins && pins[k].id != s->arg; k++)
			;
		if (k == npins) {
			snprintf(res, size, "EINVAL");
			return 0;
		}
		if (syscall(NR_IO_URING_REGISTER, (unsigned int)pins[k].fd,
			    IORING_UNREGISTER_BUFFERS_, NULL, 0U) < 0)
			return fail("IORING_UNREGISTER_BUFFERS: %s", strerror(errno));
		close(pins[k].fd);
		pins[k] = pins[--npins];
		snprintf(res, size, "0");
		return 0;
	}
	if (mm < 0 || mm >= nprocs || !procs[mm].alive) {
		snprintf(res, size, "ESRCH");
		return 0;
	}
	rq.addr = addr_of(s->start);
	rq.len = s->npages * PG_SIZE;
	rq.arg = s->arg;
	switch (s->op) {
	case OP_MMAP:
		rq.what = REQ_MMAP;
		break;
	case OP_MUNMAP:
		rq.what = REQ_MUNMAP;
		break;
	case OP_MPROTECT:
		rq.what = REQ_MPROTECT;
		break;
	case OP_MADVISE:
		rq.what = REQ_MADVISE;
		break;
	case OP_MIGRATE:
		/* a node the model does not have (arg -1) is one no kernel has online */
		rq.what = REQ_MBIND;
		rq.value = s->arg >= 0 ? (uint64_t)node_ids[s->arg] : MAX_NODE_BITS - 1;
		break;
	case OP_READ:
	case OP_WRITE:
		if (s->start >= prog.window_pages) {
			if (outside_window(mm, s->start, &mapped))
				return -1;
			snprintf(res, size, "SIGSEGV");
			return 0;
		}
		rq.what = s->op == OP_READ ? REQ_READ : REQ_WRITE;
		rq.value = s->value;
		break;
	case OP_FORK: {
		int sv[2], id = nprocs;

		if (id >= prog.nmms)
			return fail("the program forks more processes than the model did");
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
			return fail("socketpair: %s", strerror(errno));
		rq.what = REQ_FORK;
		if (call(mm, &rq, sv[1], &rp)) {
			close(sv[0]);
			close(sv[1]);
			return -1;
		}
		close(sv[1]);
		if (attach(id, (pid_t)rp.value, sv[0]))
			return -1;
		snprintf(res, size, "%d", id);
		return 0;
	}
	case OP_EXIT:
		rq.what = REQ_EXIT;
		if (call(mm, &rq, -1, &rp) || wait_gone(&procs[mm], mm, SERVER_TIMEOUT_S))
			return -1;
		forget(&procs[mm]); /* the process and its mm are gone: exit_mm ran */
		snprintf(res, size, "0");
		return 0;
	case OP_SPLIT_FOLIO: {
		char cmd[96];
		long long before, after;
		int large, r;

		if (s->start >= prog.window_pages) {
			snprintf(res, size, "EINVAL");
			return 0;
		}
		if (thp_mapped(&procs[mm], rq.addr, &large) || pmd_split_count(&before))
			return -1;
		snprintf(cmd, sizeof(cmd), "%d,%#llx,%#llx", (int)procs[mm].pid,
			 (unsigned long long)rq.addr, (unsigned long long)(rq.addr + PG_SIZE));
		r = write_text(SPLIT_HUGE_PAGES, cmd);
		if (r)
			return fail("cannot write %s: %s", SPLIT_HUGE_PAGES, strerror(-r));
		if (!large) {
			snprintf(res, size, "EINVAL");
			return 0;
		}
		if (pmd_split_count(&after))
			return -1;
		snprintf(res, size, "%s", after > before ? "0" : "EBUSY");
		return 0;
	}
	case OP_PIN: {
		int ring;

		if (s->start >= prog.window_pages) {
			snprintf(res, size, "EFAULT");
			return 0;
		}
		rq.what = REQ_PIN;
		if (call(mm, &rq, -1, &rp))
			return -1;
		if (rp.status == REP_ERRNO) {
			snprintf(res, size, "%s", errno_name(rp.err));
			return 0;
		}
		ring = (int)syscall(NR_PIDFD_GETFD, procs[mm].pidfd, (int)rp.value, 0U);
		if (ring < 0)
			return fail("pidfd_getfd: %s", strerror(errno));
		memset(&rq, 0, sizeof(rq));
		rq.what = REQ_CLOSE;
		rq.arg = (int)rp.value;
		if (call(mm, &rq, -1, &rp)) {
			close(ring);
			return -1;
		}
		pins[npins].id = ++next_pin;
		pins[npins++].fd = ring;
		snprintf(res, size, "%d", next_pin);
		return 0;
	}
	default:
		return fail("no way to run this op");
	}
	if (call(mm, &rq, -1, &rp))
		return -1;
	if (rp.status == REP_ERRNO)
		snprintf(res, size, "%s", errno_name(rp.err));
	else if (rp.status == REP_SEGV)
		snprintf(res, size, "SIGSEGV");
	else if (s->op == OP_READ)
		snprintf(res, size, "%llu", (unsigned long long)rp.value);
	else
		snprintf(res, size, "0");
	return 0;
}

/* -------------------------------------------------------------------------------------- */
/* Runs from scratch                                                                      */
/* -------------------------------------------------------------------------------------- */

enum { ST_NOT_REACHED, ST_DONE, ST_DIVERGED };

struct item {
	int op, definite;
	char *text;                /* "op N: observable: kernel X, model Y" */
	int counter;               /* a global counter's difference: its index, else -1 */
	long long kernel, model;   /* ... and the two deltas */
	/* a known disagreement that explains it if a fact about the machine holds */
	const struct known_here *needs;
	int explained;             /* the check after the runs found that fact */
};

struct oprec {
	int state;
	char result[64];
	struct sbuf notes;         /* "# " lines */
};

struct run {
	struct oprec *ops;
	struct item *items;        /* differences no known disagreement explains */
	int nitems;
	int stop_op;               /* the op whose difference ended the run, or -1 */
	int diverged_op;           /* the op of a known difference in a process's state */
	int error_op;              /* an op that could not be run or observed (-1: setup) */
	char *error;
	int held;                  /* a process outside the run held the huge zero folio */
};

/* The known disagreement of class cls at step s that needs no fact about the machine
 * (compare.py known_kind without facts), or with needs_fact, one that needs a fact */
static const struct known_here *known_at(const struct step *s, const char *cls,
					 int needs_fact)
{
	int i;

	for (i = 0; i < s->nknown; i++)
		if (!strcmp(s->known[i].cls, cls) && s->known[i].reason < NKNOWN_REASONS &&
		    (s->known[i].fact != FACT_NONE) == needs_fact)
			return &s->known[i];
	return NULL;
}

static const char *known_reason(const struct step *s, const char *cls)
{
	const struct known_here *k = known_at(s, cls, 0);

	return k ? known_reasons[k->reason] : NULL;
}

/* A difference no known disagreement explains (yet): counter is its index for a global
 * counter (kd, md its deltas), else -1 */
static void add_item(struct run *r, const struct step *s, int op, int definite,
		     const char *cls, const char *text, int counter, long long kd, long long md)
{
	struct item *it;
	struct sbuf b = { 0 };

	r->items = xrealloc(r->items, (r->nitems + 1) * sizeof(*r->items));
	it = &r->items[r->nitems++];
	memset(it, 0, sizeof(*it));
	sb_printf(&b, "op %d: %s", op, text);
	it->op = op;
	it->definite = definite;
	it->text = b.s;
	it->counter = counter;
	it->kernel = kd;
	it->model = md;
	it->needs = known_at(s, cls, 1);
}

/*
 * How many passes of the deferred split shrinker drop_caches made, as the program's
 * folios show it (compare.py shrinker_passes): each pass fails again on every folio whose
 * split failed in the model's one pass (model_failed), so the kernel's count of failed
 * splits is a whole multiple of it.  One pass when nothing failed in the model (further
 * passes change nothing) or when the kernel's count is no such multiple (the difference
 * then shows as a disagreement).
 */
static long long shrinker_passes(long long model_failed, long long kernel_failed)
{
	if (model_failed <= 0 || kernel_failed <= model_failed || kernel_failed % model_failed)
		return 1;
	return kernel_failed / model_failed;
}

static void run_error(struct run *r, int op)
{
	r->error_op = op;
	r->error = strdup(err);
}

static long long *cbefore, *cafter, *mdelta;
static int failed_counter; /* mthp.split_failed: the failed splits of PMD-size folios */

static void run_once(struct run *r)
{
	struct obs a = { 0 }, b = { 0 }, *prev = &a, *cur = &b;
	struct diff d = { { 0 }, "" };
	int i, c;

	memset(r, 0, sizeof(*r));
	next_pin = 0; /* pin ids count from 1 in every run, as in the model */
	r->ops = xcalloc(prog.nops, sizeof(*r->ops));
	r->stop_op = r->diverged_op = r->error_op = -1;
	if (swap_setup()) {
		run_error(r, -1);
		goto out;
	}
	/*
	 * No huge zero folio left over and an empty deferred split queue (the probe's
	 * drop_caches), unless a process outside the run holds the folio: then the kernel will
	 * not allocate it for the program, and the model's expectations for a folio that
	 * exists from the start are used (conform's run_once tells its model so).
	 */
	c = huge_zero_held_elsewhere();
	if (c == -2) {
		run_error(r, -1);
		goto out;
	}
	r->held = c == 1;
	if (r->held)
		diag("a process outside the run holds the huge zero folio at the start: the "
		     "model's expectations for a folio that exists are used");
	if (start_first() || observe(prev)) {
		run_error(r, -1);
		goto out;
	}
	if (compare(prev, &first_mm, 1, &d)) {
		fail("before the first op: %s", sb_str(&d.text));
		run_error(r, -1);
		goto out;
	}
	for (i = 0; i < prog.nops; i++) {
		const struct step *s = &steps[i];
		struct oprec *rec = &r->ops[i];
		int took, stop = 0;

		drain_lru();
		if (read_counters(cbefore)) {
			run_error(r, i);
			goto out;
		}
		if (apply(i, s, prev, cur, &took, rec->result, sizeof(rec->result), &rec->notes) ||
		    read_counters(cafter)) {
			run_error(r, i);
			goto out;
		}
		rec->state = ST_DONE;
		diag("op %d: %s -> %s", i, s->desc, rec->result);
		for (c = 0; c < NCOUNTERS; c++)
			if (counters[c].noise && counter_shown[c] && cafter[c] != cbefore[c])
				sb_printf(&rec->notes, "note: op %d: %s moved by %lld (activity "
					  "outside the program)\n", i, counters[c].name,
					  cafter[c] - cbefore[c]);
		if (strcmp(rec->result, s->result)) {
			char text[256];

			snprintf(text, sizeof(text), "result: kernel %s, model %s", rec->result,
				 s->result);
			add_item(r, s, i, 1, "result", text, -1, 0, 0);
			r->stop_op = i;
			goto out;
		}
		if (!took && observe(cur)) {
			run_error(r, i);
			goto out;
		}
		if (compare(cur, s->mms, s->nmms, &d)) {
			const char *why = known_reason(s, d.cls);

			if (why) {
				sb_printf(&rec->notes, "known: op %d: %s: %s\n", i, sb_str(&d.text), why);
				r->diverged_op = i;
				for (c = i + 1; c < prog.nops; c++)
					r->ops[c].state = ST_DIVERGED;
			} else {
				add_item(r, s, i, 1, d.cls, sb_str(&d.text), -1, 0, 0);
				r->stop_op = i;
			}
			goto out;
		}
		/* The model's deltas: those of a model told the huge zero folio exists when a
		 * process outside the run held it at the start */
		memset(mdelta, 0, NCOUNTERS * sizeof(*mdelta));
		{
			const struct counter_delta *cd = s->counters;
			int n = s->ncounters;

			if (r->held && s->counters_held) {
				cd = s->counters_held;
				n = s->ncounters_held;
			}
			for (c = 0; c < n; c++) {
				int k = counter_index(cd[c].name);

				if (k >= 0)
					mdelta[k] = cd[c].delta;
			}
		}
		/* shrink_deferred: the model's shrinker pass repeated as often as drop_caches made
		 * it, read off the kernel's failed splits (compare.py model_drop_slab) */
		if (s->nper_pass && failed_counter >= 0) {
			long long kf = counter_shown[failed_counter] ?
				cafter[failed_counter] - cbefore[failed_counter] : 0;
			long long passes = shrinker_passes(mdelta[failed_counter], kf);

			if (passes > 1) {
				sb_printf(&rec->notes, "note: op %d: drop_caches made %lld passes of the "
					  "deferred split shrinker (%s %lld, %lld a pass in the model): "
					  "the model's pass counted as often\n", i, passes,
					  counters[failed_counter].name, kf, mdelta[failed_counter]);
				for (c = 0; c < s->nper_pass; c++) {
					int k = counter_index(s->per_pass[c].name);

					if (k >= 0)
						mdelta[k] += (passes - 1) * s->per_pass[c].delta;
				}
			}
		}
		for (c = 0; c < NCOUNTERS && !stop; c++) {
			long long kd = cafter[c] - cbefore[c], md = mdelta[c];
			const char *why;
			char text[256];

			if (counters[c].noise || !counter_shown[c] || kd == md)
				continue;
			snprintf(text, sizeof(text), "%s: kernel %lld, model %lld", counters[c].name,
				 kd, md);
			why = known_reason(s, counters[c].name);
			if (why) {
				sb_printf(&rec->notes, "known: op %d: %s: %s\n", i, text, why);
				continue;
			}
			/* other processes only add events: fewer than the model is the program's */
			stop = !counters[c].global_state && kd < md;
			add_item(r, s, i, stop, counters[c].name, text, c, kd, md);
		}
		if (stop) {
			r->stop_op = i;
			goto out;
		}
		{
			struct obs *t = prev;

			prev = cur;
			cur = t;
		}
	}
out:
	end_processes();
	swap_off();
	obs_clear(&a);
	obs_clear(&b);
	free(a.mm);
	free(b.mm);
	sb_free(&d.text);
}

/* Does the fact a known disagreement needs hold for this difference?  Checked once the
 * runs are over, their processes gone (compare.py machine_facts) */
static int fact_holds(const struct item *it)
{
	static int held = -3; /* not checked yet */

	switch (it->needs->fact) {
	case FACT_HUGE_ZERO_HELD_ELSEWHERE:
		/* only for the kernel not allocating the huge zero folio where the model does */
		if (it->counter < 0 || strcmp(counters[it->counter].name,
					      "vmstat.thp_zero_page_alloc") ||
		    it->kernel >= it->model)
			return 0;
		if (held == -3) {
			held = huge_zero_held_elsewhere();
			diag("checked after the runs: a process outside them %s the huge zero folio",
			     held == 1 ? "holds" : held == 0 ? "does not hold" :
			     "could not be checked for");
		}
		return held == 1;
	}
	return 0;
}

/* A difference counts when the last run shows it and a run before it showed it too, with
 * the same op, observable and values */
static int confirmed(const char *text, const struct run *runs, int nruns)
{
	int i, j, in_last = 0, before = 0;

	for (j = 0; j < runs[nruns - 1].nitems; j++)
		in_last |= !strcmp(runs[nruns - 1].items[j].text, text);
	for (i = 0; i < nruns - 1; i++)
		for (j = 0; j < runs[i].nitems; j++)
			before |= !strcmp(runs[i].items[j].text, text);
	return in_last && before;
}

/* -------------------------------------------------------------------------------------- */
/* main                                                                                   */
/* -------------------------------------------------------------------------------------- */

static void __attribute__((noreturn)) skip_all(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));
static void __attribute__((noreturn)) skip_all(const char *fmt, ...)
{
	va_list ap;

	restore_all();
	if (restore_failures)
		diag("could not restore %s (and %d more)", restore_problem,
		     (int)restore_failures - 1);
	printf("1..0 # SKIP ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	exit(KSFT_SKIP);
}

static void check_machine(void)
{
	char buf[64];

	if (geteuid() != 0)
		skip_all("not root: PFNs, kpageflags and the THP knobs need root");
	if (!exists(THP_DIR))
		skip_all("the kernel has no transparent huge pages (no sysfs THP directory)");
	if (!exists(PMD_DIR))
		skip_all("no PMD-size (2048 kB) THP on this kernel");
	if (read_text(THP_DIR "/hpage_pmd_size", buf, sizeof(buf)) < 0 ||
	    strtoul(buf, NULL, 10) != THP_NR * PG_SIZE)
		skip_all("the PMD THP size is not 2 MiB: not x86_64 geometry");
	if (sysconf(_SC_PAGESIZE) != (long)PG_SIZE)
		skip_all("the base page size is not 4 KiB");
	if (prog.pud && !exists(PUD_DIR))
		skip_all("no PUD-size (1048576 kB) THP on this kernel: the program needs PUD "
			 "THP (pud_enabled %s)", prog.pud_enabled);
	if (!prog.pud && (!exists("/proc/kpageflags") || !exists("/proc/kpagecount") ||
			  !exists("/proc/self/pagemap")))
		skip_all("/proc/kpageflags, kpagecount or pagemap is missing "
			 "(CONFIG_PROC_PAGE_MONITOR)");
	if (prog.nodes) {
		read_nodes();
		if (nnodes < prog.nodes)
			skip_all("migrate needs %d NUMA nodes; this machine has %d", prog.nodes,
				 nnodes);
	}
}

/* Every knob the model's semantics depend on (live.py apply_config), each saved first */
static void apply_config(void)
{
	struct dirent *de;
	char path[300];
	DIR *d;

	if (set_knob(THP_DIR "/enabled", prog.thp_enabled))
		skip_all("%s", err);
	d = opendir(THP_DIR);
	while (d && (de = readdir(d))) { /* no mTHP orders in the model */
		if (strncmp(de->d_name, "hugepages-", 10) || !strcmp(de->d_name, "hugepages-2048kB") ||
		    (prog.pud && !strcmp(de->d_name, "hugepages-1048576kB")))
			continue;
		snprintf(path, sizeof(path), THP_DIR "/%s/enabled", de->d_name);
		if (exists(path) && set_knob(path, "never")) {
			closedir(d);
			skip_all("%s", err);
		}
	}
	if (d)
		closedir(d);
	if (set_knob(PMD_DIR "/enabled", prog.pmd_enabled) ||
	    (prog.pud && set_knob(PUD_DIR "/enabled", prog.pud_enabled)) ||
	    /* a THP fault compacts rather than falls back: the model allocates */
	    set_knob(THP_DIR "/defrag", "always") ||
	    set_knob(THP_DIR "/use_zero_page", prog.use_zero_page ? "1" : "0"))
		skip_all("%s", err);
	if (exists(THP_DIR "/shrink_underused")) {
		if (set_knob(THP_DIR "/shrink_underused", prog.shrink_underused ? "1" : "0"))
			skip_all("%s", err);
	} else if (!prog.shrink_underused) {
		skip_all("this kernel has no shrink_underused knob");
	}
	/* khugepaged asleep; max_ptes_none 511, at which thp_underused() is always false (the
	 * model's shrinker relies on it); swap-in of the one page faulted; no zswap */
	if (set_knob(THP_DIR "/khugepaged/scan_sleep_millisecs", "3600000") ||
	    set_knob(THP_DIR "/khugepaged/alloc_sleep_millisecs", "3600000") ||
	    set_knob(THP_DIR "/khugepaged/pages_to_scan", "8") ||
	    set_knob(THP_DIR "/khugepaged/max_ptes_none", "511") ||
	    set_knob("/proc/sys/vm/page-cluster", "0") ||
	    /* not mainline: off, mainline's way */
	    (exists(THP_DIR "/anon_beside_full") && set_knob(THP_DIR "/anon_beside_full", "0")) ||
	    (exists("/sys/module/zswap/parameters/enabled") &&
	     set_knob("/sys/module/zswap/parameters/enabled", "N")))
		skip_all("%s", err);
}

static void prepare(void)
{
	const char *why;
	char buf[64];

	if (take_lock())
		skip_all("%s", err);
	if (restore_leftover())
		skip_all("%s", err);
	catch_signals();
	if (open_drain())
		skip_all("%s", err);
	if (!prog.pud) {
		kflags_fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
		kcount_fd = open("/proc/kpagecount", O_RDONLY | O_CLOEXEC);
		if (kflags_fd < 0 || kcount_fd < 0)
			skip_all("cannot open /proc/kpageflags or kpagecount: %s", strerror(errno));
	}
	if (prog.split_folio && (why = split_huge_pages_problem()))
		skip_all("split_folio: %s", why);
	if (prog.pin) {
		struct uring_params params;
		long ring;

		memset(&params, 0, sizeof(params));
		ring = syscall(NR_IO_URING_SETUP, 1U, &params);
		if (ring < 0)
			skip_all("pin: io_uring is not available here (%s)", strerror(errno));
		close((int)ring);
	}
	if (prog.swap_pages) {
		if (active_swaps())
			skip_all("swap is already active: its capacity is not the program's");
		if (!exists(ZRAM_SYS))
			skip_all("no zram device for a synchronous swap device (CONFIG_ZRAM)");
		if (read_text(ZRAM_SYS "/disksize", buf, sizeof(buf)) < 0 ||
		    strtoull(buf, NULL, 10) != 0)
			skip_all(ZRAM_DEV " is in use");
		if (prog.swap_pages >= (1UL << 32))
			skip_all("a swap device of %lu pages is too large", prog.swap_pages);
	}
	if (prog.nodes) {
		/* the model allocates every folio on node 0 */
		unsigned long mask[MAX_NODE_BITS / 64];

		memset(mask, 0, sizeof(mask));
		mask[node_ids[0] / 64] |= 1UL << (node_ids[0] % 64);
		if (syscall(SYS_set_mempolicy, MPOL_BIND_, mask, (unsigned long)MAX_NODE_BITS))
			skip_all("set_mempolicy: %s", strerror(errno));
	}
	apply_config();
	find_counters();
}

int main(void)
{
	struct run runs[MAX_RUNS];
	int nruns = 0, i, j, c, pass = 0, failed = 0, skipped = 0;
	struct run *last;

	setvbuf(stdout, NULL, _IOLBF, 0);
	controller = getpid();
	TAP_HEADER();
	diag("pudthp reproducer of %s: %d ops, %d process%s, %s", prog.name, prog.nops,
	     prog.nmms, prog.nmms == 1 ? "" : "es", prog.pud ? "PUD THP" : "PMD level");
	diag("config: thp_enabled %s, pmd_enabled %s, pud_enabled %s, use_zero_page %d, "
	     "shrink_underused %d, swap %lu pages", prog.thp_enabled, prog.pmd_enabled,
	     prog.pud_enabled, prog.use_zero_page, prog.shrink_underused, prog.swap_pages);
	for (i = 0; i < prog.nops; i++) {
		const struct counter_delta *tables[] = { steps[i].counters, steps[i].counters_held,
							 steps[i].per_pass };
		const int sizes[] = { steps[i].ncounters, steps[i].ncounters_held,
				      steps[i].nper_pass };

		for (c = 0; c < 3; c++) {
			for (j = 0; j < sizes[c]; j++) {
				if (counter_index(tables[c][j].name) < 0) {
					printf("Bail out! op %d names a counter this file does not "
					       "read: %s\n", i, tables[c][j].name);
					return KSFT_FAIL;
				}
			}
		}
	}
	failed_counter = counter_index("mthp.split_failed");
	check_machine();
	/* This process never gets a THP, so the processes it forks inherit none */
	prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
	procs = xcalloc(prog.nmms, sizeof(*procs));
	pins = xcalloc(prog.nops, sizeof(*pins));
	cbefore = xcalloc(NCOUNTERS, sizeof(*cbefore));
	cafter = xcalloc(NCOUNTERS, sizeof(*cafter));
	mdelta = xcalloc(NCOUNTERS, sizeof(*mdelta));
	prepare();
	TAP_PLAN(prog.nops);

	/* A difference counts only when another run from scratch repeats it (compare.py) */
	for (;;) {
		struct run *r = &runs[nruns++];

		diag("run %d from scratch", nruns);
		run_once(r);
		if (r->error && r->error_op < 0) {
			restore_all();
			printf("Bail out! %s\n", r->error);
			return KSFT_FAIL;
		}
		if (r->error || !r->nitems || nruns == MAX_RUNS)
			break;
		for (i = 0; i < r->nitems && !confirmed(r->items[i].text, runs, nruns); i++)
			;
		if (i < r->nitems)
			break;
	}
	/* A repeated difference that a known disagreement explains only with a fact about the
	 * machine is known when the machine shows that fact now (compare.py known_kind with
	 * Session.run's facts); the program's settings are still those of the runs */
	last = &runs[nruns - 1];
	for (j = 0; j < last->nitems; j++)
		if (last->items[j].needs && confirmed(last->items[j].text, runs, nruns))
			last->items[j].explained = fact_holds(&last->items[j]);
	restore_all();
	for (i = 0; i < nruns; i++)
		for (j = 0; j < runs[i].nitems; j++)
			if (!confirmed(runs[i].items[j].text, runs, nruns))
				diag("not repeated by another run from scratch: run %d: %s", i + 1,
				     runs[i].items[j].text);
	for (i = 0; i < prog.nops; i++) {
		const struct oprec *rec = &last->ops[i];
		const struct item *bad = NULL;
		const char *n = sb_str(&rec->notes), *e;

		while (*n) { /* the run's notes on this op, one "# " line each */
			e = strchr(n, '\n');
			printf("# %.*s\n", (int)(e ? e - n : (long)strlen(n)), n);
			n = e ? e + 1 : n + strlen(n);
		}
		for (j = 0; j < last->nitems; j++) {
			const struct item *it = &last->items[j];

			if (it->op != i || !confirmed(it->text, runs, nruns))
				continue;
			if (it->explained)
				printf("# known: %s: %s\n", it->text,
				       known_reasons[it->needs->reason]);
			else if (!bad)
				bad = it;
		}
		if (last->error && last->error_op == i) {
			TAP_NOT_OK(i + 1, "op %d: %s: error: %s\n", i, steps[i].desc, last->error);
			failed++;
		} else if (bad) {
			TAP_NOT_OK(i + 1, "op %d: %s: %s (in %d runs from scratch)\n", i,
				   steps[i].desc, strchr(bad->text, ':') + 2, nruns);
			failed++;
		} else if (rec->state == ST_DIVERGED) {
			TAP_SKIP(i + 1, "op %d: %s # SKIP the state diverged at op %d (a known "
				 "disagreement)\n", i, steps[i].desc, last->diverged_op);
			skipped++;
		} else if (rec->state == ST_NOT_REACHED) {
			TAP_SKIP(i + 1, "op %d: %s # SKIP not run: run %d stopped at op %d\n", i,
				 steps[i].desc, nruns, last->error ? last->error_op : last->stop_op);
			skipped++;
		} else {
			TAP_OK(i + 1, "op %d: %s\n", i, steps[i].desc);
			pass++;
		}
	}
	if (restore_failures) {
		diag("could not restore %s (and %d more)", restore_problem,
		     (int)restore_failures - 1);
		failed++;
	}
	TAP_TOTALS(pass, failed, skipped);
	return failed ? KSFT_FAIL : KSFT_PASS;
}

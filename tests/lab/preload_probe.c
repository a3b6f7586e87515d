/* A test program for the memfd_birth preload library (tests/lab/test_preload.py): each scenario prints one JSON
 * object per step; "pause" steps wait for a line on stdin so that the test can look at /proc/PID. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB (1UL << 20)

/* The inode of the birth memfd mapped at addr, or 0 when addr is not in a birth mapping. */
static unsigned long birth_inode(void *addr)
{
	FILE *maps = fopen("/proc/self/maps", "r");
	char line[512];
	unsigned long found = 0;
	while (fgets(line, sizeof line, maps)) {
		unsigned long from, to, inode;
		int path = 0;
		if (sscanf(line, "%lx-%lx %*s %*x %*x:%*x %lu %n", &from, &to, &inode, &path) == 3 &&
		    (uintptr_t)addr >= from && (uintptr_t)addr < to && path && strncmp(line + path, "/memfd:wb-birth", 15) == 0)
			found = inode;
	}
	fclose(maps);
	return found;
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(i * 7 + seed);
}

static int check(const unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (unsigned char)(i * 7 + seed))
			return 0;
	return 1;
}

static int zeros(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

static void pause_for_test(void)
{
	char line[16];
	fflush(stdout);
	if (!fgets(line, sizeof line, stdin))
		exit(3);
}

static void *map(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		printf("{\"error\": \"mmap: %s\"}\n", strerror(errno));
		exit(2);
	}
	return p;
}

static int mmap_scenario(size_t size)
{
	unsigned char *p = map(size);
	fill(p, size, 1);
	printf("{\"step\": \"mapped\", \"addr\": %lu, \"inode\": %lu, \"data\": %d}\n", (unsigned long)p, birth_inode(p),
	       check(p, size, 1));
	pause_for_test();
	unsigned char *small = map(64 * 1024);
	printf("{\"step\": \"small\", \"inode\": %lu}\n", birth_inode(small));
	munmap(p, size);
	printf("{\"step\": \"unmapped\"}\n");
	pause_for_test();
	return 0;
}

static int fork_scenario(void)
{
	size_t size = 4 * MIB;
	unsigned char *p = map(size);
	fill(p, size, 'P');
	unsigned long parent_inode = birth_inode(p);
	int to_parent[2], to_child[2];
	if (pipe(to_parent) || pipe(to_child))
		return 2;
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		printf("{\"step\": \"fork\", \"errno\": %d}\n", errno);
		return 0;
	}
	char byte = 0;
	if (pid == 0) {
		int saw_parent = check(p, size, 'P');
		unsigned long child_inode = birth_inode(p);
		fill(p, size, 'C');
		(void)!write(to_parent[1], "", 1);
		(void)!read(to_child[0], &byte, 1);
		printf("{\"step\": \"child\", \"saw_parent_data\": %d, \"keeps_own\": %d, \"inode\": %lu, "
		       "\"parent_inode\": %lu}\n",
		       saw_parent, check(p, size, 'C'), child_inode, parent_inode);
		fflush(stdout);
		_exit(0);
	}
	(void)!read(to_parent[0], &byte, 1);
	int keeps_own = check(p, size, 'P');
	fill(p, size, 'Q');
	(void)!write(to_child[1], "", 1);
	int status;
	waitpid(pid, &status, 0);
	printf("{\"step\": \"parent\", \"keeps_own\": %d, \"child_status\": %d, \"inode\": %lu}\n", keeps_own,
	       WIFEXITED(status) ? WEXITSTATUS(status) : -1, birth_inode(p));
	return 0;
}

static int munmap_scenario(void)
{
	size_t size = 8 * MIB;
	unsigned char *p = map(size);
	fill(p, size, 3);
	printf("{\"step\": \"mapped\", \"addr\": %lu}\n", (unsigned long)p);
	pause_for_test();
	munmap(p + 2 * MIB, 4 * MIB);
	printf("{\"step\": \"middle unmapped\", \"head\": %d, \"tail\": %d, \"head_inode\": %lu, \"tail_inode\": %lu}\n",
	       check(p, 2 * MIB, 3), check(p + 6 * MIB, 2 * MIB, 6 * MIB * 7 + 3), birth_inode(p),
	       birth_inode(p + 6 * MIB));
	pause_for_test();
	/* growing the head to 7 MiB would reach the file range the tail maps: it moves into a fresh memfd */
	unsigned char *q = mremap(p, 2 * MIB, 7 * MIB, MREMAP_MAYMOVE);
	printf("{\"step\": \"head grown\", \"ok\": %d, \"head\": %d, \"new_zero\": %d, \"inode\": %lu, "
	       "\"tail\": %d}\n",
	       q != MAP_FAILED, q != MAP_FAILED && check(q, 2 * MIB, 3), q != MAP_FAILED && zeros(q + 2 * MIB, 5 * MIB),
	       q != MAP_FAILED ? birth_inode(q) : 0, check(p + 6 * MIB, 2 * MIB, 6 * MIB * 7 + 3));
	munmap(p + 6 * MIB, 2 * MIB);
	printf("{\"step\": \"tail unmapped\"}\n");
	pause_for_test();
	return 0;
}

static int mremap_scenario(void)
{
	unsigned char *p = map(4 * MIB);
	fill(p, 4 * MIB, 5);
	unsigned long inode = birth_inode(p);
	unsigned char *q = mremap(p, 4 * MIB, 12 * MIB, MREMAP_MAYMOVE);
	int grown = q != MAP_FAILED;
	int kept = grown && check(q, 4 * MIB, 5), fresh_zero = grown && zeros(q + 4 * MIB, 8 * MIB);
	if (grown)
		memset(q + 4 * MIB, 0xab, 8 * MIB);
	unsigned char *r = grown ? mremap(q, 12 * MIB, 2 * MIB, 0) : MAP_FAILED;
	int shrunk = r != MAP_FAILED && check(r, 2 * MIB, 5);
	errno = 0;
	void *view = mremap(r, 0, 2 * MIB, MREMAP_MAYMOVE);
	int view_errno = view == MAP_FAILED ? errno : 0;
	printf("{\"step\": \"mremap\", \"grown\": %d, \"kept\": %d, \"fresh_zero\": %d, \"same_memfd\": %d, "
	       "\"shrunk\": %d, \"second_view_errno\": %d}\n",
	       grown, kept, fresh_zero, grown && birth_inode(q) == inode, shrunk, view_errno);
	return 0;
}

static int madvise_scenario(void)
{
	size_t size = 4 * MIB;
	unsigned char *p = map(size);
	fill(p, size, 9);
	int dontneed = madvise(p, MIB, MADV_DONTNEED);
	int free_ = madvise(p + MIB, MIB, MADV_FREE);
	printf("{\"step\": \"madvise\", \"dontneed\": %d, \"free\": %d, \"first_zero\": %d, \"second_zero\": %d, "
	       "\"rest\": %d, \"inode\": %lu}\n",
	       dontneed, free_, zeros(p, MIB), zeros(p + MIB, MIB), check(p + 2 * MIB, 2 * MIB, 2 * MIB * 7 + 9),
	       birth_inode(p));
	return 0;
}

static int malloc_scenario(void)
{
	unsigned char *big = malloc(8 * MIB);
	fill(big, 8 * MIB, 11);
	unsigned long inode = birth_inode(big);
	size_t usable = malloc_usable_size(big);
	int aligned16 = ((uintptr_t)big % 16) == 0;
	unsigned char *bigger = realloc(big, 24 * MIB);
	int kept = check(bigger, 8 * MIB, 11);
	unsigned char *zeroed = calloc(4, 2 * MIB);
	int calloc_zero = zeros(zeroed, 8 * MIB);
	unsigned char *small = malloc(1000);
	memset(small, 1, 1000);
	unsigned char *grown_small = realloc(small, 3 * MIB);
	printf("{\"step\": \"malloc\", \"inode\": %lu, \"usable\": %zu, \"realloc_kept\": %d, \"realloc_inode\": %lu, "
	       "\"calloc_zero\": %d, \"calloc_inode\": %lu, \"small_grown_inode\": %lu, \"small_kept\": %d, "
	       "\"aligned16\": %d}\n",
	       inode, usable, kept, birth_inode(bigger), calloc_zero, birth_inode(zeroed), birth_inode(grown_small),
	       grown_small[0] == 1 && grown_small[999] == 1, aligned16);
	free(bigger);
	free(zeroed);
	free(grown_small);
	void *small_again = malloc(100);
	printf("{\"step\": \"freed\", \"small_inode\": %lu}\n", birth_inode(small_again));
	free(small_again);
	return 0;
}

/* Reads operations from stdin, one a line, on up to 8 slots of pages, and prints what a program would see:
 *   map S N         S = N fresh pages (an unmapped old S is dropped)
 *   write S P SEED  fill page P of S
 *   unmap S P N     unmap pages P..P+N-1 of S
 *   resize S N      mremap S (wholly mapped) to N pages, MREMAP_MAYMOVE
 *   dontneed S P N  madvise(MADV_DONTNEED) on pages P..P+N-1 (the mapped ones)
 *   fork S P SEED   a child fills page P of S; the parent then prints whether its page stayed
 *   sum S           a hash of each mapped page of S
 * Run with and without the library, the outputs must be the same. */
#define SLOTS 8
#define MAX_PAGES 64
struct slot {
	unsigned char *base;
	int pages;
	unsigned char mapped[MAX_PAGES];
};

static unsigned long page_hash(const unsigned char *p)
{
	unsigned long h = 1469598103934665603UL;
	for (int i = 0; i < 4096; i++)
		h = (h ^ p[i]) * 1099511628211UL;
	return h;
}

static int script_scenario(void)
{
	struct slot slots[SLOTS] = {0};
	char line[128], op[16];
	int s, a, b;
	while (fgets(line, sizeof line, stdin)) {
		int n = sscanf(line, "%15s %d %d %d", op, &s, &a, &b);
		if (n < 2 || s < 0 || s >= SLOTS)
			continue;
		struct slot *sl = &slots[s];
		if (strcmp(op, "map") == 0 && n >= 3 && a > 0 && a <= MAX_PAGES) {
			for (int i = 0; i < sl->pages; i++)
				if (sl->mapped[i])
					munmap(sl->base + 4096UL * i, 4096);
			sl->base = map(4096UL * a);
			sl->pages = a;
			memset(sl->mapped, 1, sizeof sl->mapped);
		} else if (strcmp(op, "write") == 0 && n == 4 && a >= 0 && a < sl->pages && sl->mapped[a]) {
			fill(sl->base + 4096UL * a, 4096, (unsigned)b);
		} else if (strcmp(op, "unmap") == 0 && n == 4 && a >= 0 && b > 0 && a + b <= sl->pages) {
			munmap(sl->base + 4096UL * a, 4096UL * b);
			memset(sl->mapped + a, 0, (size_t)b);
		} else if (strcmp(op, "resize") == 0 && n >= 3 && a > 0 && a <= MAX_PAGES && sl->pages &&
			   memchr(sl->mapped, 0, (size_t)sl->pages) == NULL) {
			void *q = mremap(sl->base, 4096UL * sl->pages, 4096UL * a, MREMAP_MAYMOVE);
			if (q == MAP_FAILED) {
				printf("resize failed %d\n", errno);
				continue;
			}
			sl->base = q;
			sl->pages = a;
		} else if (strcmp(op, "dontneed") == 0 && n == 4 && a >= 0 && b > 0 && a + b <= sl->pages) {
			for (int i = a; i < a + b; i++)
				if (sl->mapped[i])
					madvise(sl->base + 4096UL * i, 4096, MADV_DONTNEED);
		} else if (strcmp(op, "fork") == 0 && n == 4 && a >= 0 && a < sl->pages && sl->mapped[a]) {
			unsigned long before = page_hash(sl->base + 4096UL * a);
			fflush(stdout);
			pid_t pid = fork();
			if (pid == 0) {
				fill(sl->base + 4096UL * a, 4096, (unsigned)b);
				_exit(0);
			}
			waitpid(pid, NULL, 0);
			printf("fork %d %d kept %d\n", s, a, page_hash(sl->base + 4096UL * a) == before);
		} else if (strcmp(op, "sum") == 0) {
			printf("sum %d:", s);
			for (int i = 0; i < sl->pages; i++)
				if (sl->mapped[i])
					printf(" %d=%lx", i, page_hash(sl->base + 4096UL * i));
			printf("\n");
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	if (strcmp(argv[1], "mmap") == 0)
		return mmap_scenario(argc > 2 ? strtoul(argv[2], NULL, 0) : 8 * MIB);
	if (strcmp(argv[1], "fork") == 0)
		return fork_scenario();
	if (strcmp(argv[1], "munmap") == 0)
		return munmap_scenario();
	if (strcmp(argv[1], "mremap") == 0)
		return mremap_scenario();
	if (strcmp(argv[1], "madvise") == 0)
		return madvise_scenario();
	if (strcmp(argv[1], "malloc") == 0)
		return malloc_scenario();
	if (strcmp(argv[1], "script") == 0)
		return script_scenario();
	return 2;
}

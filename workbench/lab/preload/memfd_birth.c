/*
 * memfd_birth: an LD_PRELOAD library that backs a process's large private anonymous memory with memfds from the
 * moment it is mapped, so that an unmodified program's memory can be preserved with LUO as it is (no conversion).
 *
 * What it interposes (see workbench/lab/preload.py for the whole contract):
 *   mmap/mmap64   a MAP_PRIVATE|MAP_ANONYMOUS mapping of at least WORKBENCH_MEMFD_BIRTH_MIN bytes (not a stack,
 *                 not MAP_HUGETLB) becomes MAP_SHARED of a fresh memfd named "wb-birth" of that size. Allocators
 *                 in their own shared library (jemalloc, tcmalloc, mimalloc) call mmap through the PLT: all their
 *                 extents and arenas land here.
 *   malloc/calloc/realloc/reallocarray/free/malloc_usable_size
 *                 glibc's malloc calls its internal __mmap, which no preload can reach, and grows its main arena
 *                 with brk. When the next malloc is glibc's own, blocks of at least the threshold are served here
 *                 from birth memfds (a 16-byte header, so their pointers are 16 bytes past a page boundary); all
 *                 else is forwarded. glibc's arenas and aligned allocations (posix_memalign, ...) stay anonymous.
 *   munmap        unmapping part of a birth mapping punches the same range out of its memfd (memory is freed as
 *                 for anonymous memory); the memfd is closed when nothing maps it any more.
 *   mremap        shrinking punches the tail; growing extends the memfd when the file range after the mapping is
 *                 free, else (a region that was split by a partial munmap) copies into a fresh memfd when
 *                 MREMAP_MAYMOVE allows, else fails with ENOMEM. old_size 0 (a second view) fails with EINVAL,
 *                 as for private anonymous memory; MREMAP_DONTUNMAP is not supported (EINVAL).
 *   madvise       MADV_DONTNEED and MADV_FREE on a birth mapping punch the range out of the memfd: the next read
 *                 sees zeros, as anonymous memory would (a shared mapping would otherwise keep the old data).
 *   fork          a private mapping is copy-on-write after fork, a shared one is not. WORKBENCH_MEMFD_BIRTH_FORK=
 *                 copy (default): the child replaces every birth mapping by a copy in a fresh memfd of its own,
 *                 while the forking parent thread waits for it, so parent and child do not see each other's
 *                 writes (other threads of the parent that write during the copy can tear the child's snapshot).
 *                 refuse: fork fails with ENOMEM while birth mappings exist. share: the child shares them.
 *
 * The registry is the kernel's own: every birth mapping is a "/memfd:wb-birth" line of /proc/PID/maps and every
 * memfd a descriptor in /proc/PID/fd (so an agent can take it with pidfd_getfd and preserve it with LUO). With
 * WORKBENCH_MEMFD_BIRTH_DIR set, the library also announces itself in DIR/PID.json (written whole, by rename).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define PAGE 4096UL
#define HEADER 16UL
#define MAX_REGIONS 8192
#define SPLIT_RESERVE 256
#define MEMFD_NAME "wb-birth"
#define MAPS_BUFFER (4UL << 20)

enum fork_policy { FORK_COPY, FORK_REFUSE, FORK_SHARE };

struct region {
	uintptr_t start;
	size_t length;
	int fd;
	off_t offset;     /* of start in the memfd */
	int malloc_block; /* served by malloc(): the block is start + HEADER */
};

static struct region regions[MAX_REGIONS];
static int region_count;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static size_t threshold = 1UL << 20;
static enum fork_policy fork_policy = FORK_COPY;
static int enabled = 1;
static int take_malloc; /* serve large malloc blocks (the next malloc is glibc's) */
static unsigned long fallbacks;

static void *(*next_malloc)(size_t);
static void (*next_free)(void *);
static void *(*next_calloc)(size_t, size_t);
static void *(*next_realloc)(void *, size_t);
static size_t (*next_usable_size)(void *);
static pid_t (*next_fork)(void);
static int resolving;
static char bootstrap[1 << 16] __attribute__((aligned(16)));
static size_t bootstrap_used;
static char maps_buffer[MAPS_BUFFER];

extern void *__libc_malloc(size_t);

static size_t page_round(size_t n) { return (n + PAGE - 1) & ~(PAGE - 1); }

static void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

static int sys_munmap(void *addr, size_t len) { return (int)syscall(SYS_munmap, addr, len); }

static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n > 0)
		(void)!write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* The regions' table: callers hold the lock. */

static int fd_in_use(int fd)
{
	for (int i = 0; i < region_count; i++)
		if (regions[i].fd == fd)
			return 1;
	return 0;
}

static int add_region(uintptr_t start, size_t length, int fd, off_t offset, int malloc_block)
{
	if (region_count == MAX_REGIONS) {
		say("memfd_birth: more than %d birth regions; the table is full\n", MAX_REGIONS);
		return -1;
	}
	regions[region_count++] = (struct region){start, length, fd, offset, malloc_block};
	return 0;
}

static void drop_region(int i) { regions[i] = regions[--region_count]; }

/* Splits the regions that straddle addr or addr + length, so that each lies wholly inside or outside. */
static void isolate(uintptr_t addr, size_t length)
{
	uintptr_t cuts[2] = {addr, addr + length};
	for (int c = 0; c < 2; c++)
		for (int i = 0; i < region_count; i++) {
			struct region *r = &regions[i];
			if (cuts[c] > r->start && cuts[c] < r->start + r->length) {
				size_t head = cuts[c] - r->start;
				if (add_region(cuts[c], r->length - head, r->fd, r->offset + (off_t)head, 0) == 0)
					regions[i].length = head;
				break;
			}
		}
}

/* Forgets the regions inside [addr, addr + length) (no longer mapped): their memfd pages are punched out, and a
 * memfd nothing maps any more is closed. */
static void forget_range(uintptr_t addr, size_t length)
{
	isolate(addr, length);
	for (int i = 0; i < region_count;) {
		struct region r = regions[i];
		if (r.start >= addr && r.start + r.length <= addr + length) {
			drop_region(i);
			if (fd_in_use(r.fd))
				fallocate(r.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r.offset, (off_t)r.length);
			else
				close(r.fd);
		} else {
			i++;
		}
	}
}

static int overlaps(uintptr_t addr, size_t length)
{
	for (int i = 0; i < region_count; i++)
		if (regions[i].start < addr + length && addr < regions[i].start + regions[i].length)
			return 1;
	return 0;
}

static int find_region(uintptr_t start)
{
	for (int i = 0; i < region_count; i++)
		if (regions[i].start == start)
			return i;
	return -1;
}

/* A fresh birth mapping of length bytes (callers hold the lock); MAP_FAILED with errno when it cannot be made. */
static void *birth_map(void *addr, size_t length, int prot, int flags, int malloc_block)
{
	if (region_count >= MAX_REGIONS - SPLIT_RESERVE) {
		errno = ENOMEM;
		return MAP_FAILED;
	}
	int fd = memfd_create(MEMFD_NAME, MFD_CLOEXEC);
	if (fd < 0)
		return MAP_FAILED;
	if (ftruncate(fd, (off_t)length) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return MAP_FAILED;
	}
	int shared = (flags & ~(MAP_PRIVATE | MAP_ANONYMOUS)) | MAP_SHARED;
	void *p = sys_mmap(addr, length, prot, shared, fd, 0);
	if (p == MAP_FAILED) {
		int e = errno;
		close(fd);
		errno = e;
		return MAP_FAILED;
	}
	if (flags & MAP_FIXED)
		forget_range((uintptr_t)p, length);
	if (add_region((uintptr_t)p, length, fd, 0, malloc_block) != 0) {
		sys_munmap(p, length);
		close(fd);
		errno = ENOMEM;
		return MAP_FAILED;
	}
	return p;
}

static int eligible(size_t length, int flags)
{
	int kind = MAP_PRIVATE | MAP_ANONYMOUS;
	return enabled && length >= threshold && (flags & (kind | MAP_SHARED)) == kind &&
	       !(flags & (MAP_STACK | MAP_GROWSDOWN | MAP_HUGETLB));
}

void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
	if (eligible(length, flags)) {
		pthread_mutex_lock(&lock);
		void *p = birth_map(addr, page_round(length), prot, flags, 0);
		if (p == MAP_FAILED && !(flags & MAP_FIXED_NOREPLACE && errno == EEXIST))
			fallbacks++;
		pthread_mutex_unlock(&lock);
		if (p != MAP_FAILED || (flags & MAP_FIXED_NOREPLACE && errno == EEXIST))
			return p;
	}
	if (!(flags & MAP_FIXED))
		return sys_mmap(addr, length, prot, flags, fd, offset);
	pthread_mutex_lock(&lock);
	void *p = sys_mmap(addr, length, prot, flags, fd, offset);
	if (p != MAP_FAILED)
		forget_range((uintptr_t)p, page_round(length));
	pthread_mutex_unlock(&lock);
	return p;
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
	__attribute__((alias("mmap")));

int munmap(void *addr, size_t length)
{
	pthread_mutex_lock(&lock);
	int r = sys_munmap(addr, length);
	if (r == 0)
		forget_range((uintptr_t)addr, page_round(length));
	pthread_mutex_unlock(&lock);
	return r;
}

/* /proc/self/maps into maps_buffer, NUL-terminated (cut at MAPS_BUFFER). Returns 0, or -1 with errno. */
static int read_own_maps(void)
{
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t used = 0;
	ssize_t n;
	while (used < MAPS_BUFFER - 1 && (n = read(fd, maps_buffer + used, MAPS_BUFFER - 1 - used)) > 0)
		used += (size_t)n;
	close(fd);
	maps_buffer[used] = 0;
	return 0;
}

/* The protection of the mapping at addr, from /proc/self/maps (-1 when it is not mapped). */
static int protection_of(uintptr_t addr)
{
	if (read_own_maps() != 0)
		return -1;
	for (char *line = maps_buffer; line && *line;) {
		char *end = strchr(line, '\n');
		unsigned long from, to;
		char perms[5];
		if (sscanf(line, "%lx-%lx %4s", &from, &to, perms) == 3 && addr >= from && addr < to)
			return (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
			       (perms[2] == 'x' ? PROT_EXEC : 0);
		line = end ? end + 1 : NULL;
	}
	return -1;
}

/* Copies length bytes of src's file from offset to dst's file at dst_offset, skipping holes. */
static int copy_data(int src, off_t offset, int dst, off_t dst_offset, size_t length)
{
	void *to = sys_mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, dst, dst_offset);
	if (to == MAP_FAILED)
		return -1;
	off_t end = offset + (off_t)length;
	for (off_t at = offset; at < end;) {
		off_t data = lseek(src, at, SEEK_DATA);
		if (data < 0 || data >= end)
			break;
		off_t hole = lseek(src, data, SEEK_HOLE);
		if (hole < 0 || hole > end)
			hole = end;
		for (off_t pos = data; pos < hole;) {
			ssize_t got = pread(src, (char *)to + (pos - offset), (size_t)(hole - pos), pos);
			if (got <= 0) {
				sys_munmap(to, length);
				return -1;
			}
			pos += got;
		}
		at = hole;
	}
	sys_munmap(to, length);
	return 0;
}

static void *grow_region(int i, size_t new_length, int flags, void *new_address)
{
	struct region r = regions[i];
	off_t file_end = r.offset + (off_t)new_length;
	int free_after = 1;
	for (int j = 0; j < region_count; j++)
		if (j != i && regions[j].fd == r.fd && regions[j].offset < file_end &&
		    regions[j].offset + (off_t)regions[j].length > r.offset + (off_t)r.length)
			free_after = 0;
	if (free_after) {
		struct stat st;
		if (fstat(r.fd, &st) != 0 || (st.st_size < file_end && ftruncate(r.fd, file_end) != 0))
			return MAP_FAILED;
		void *p = (void *)syscall(SYS_mremap, r.start, r.length, new_length, flags, new_address);
		if (p != MAP_FAILED) {
			regions[i].start = (uintptr_t)p;
			regions[i].length = new_length;
		}
		return p;
	}
	if (!(flags & MREMAP_MAYMOVE)) {
		errno = ENOMEM;
		return MAP_FAILED;
	}
	int prot = protection_of(r.start);
	void *p = birth_map(flags & MREMAP_FIXED ? new_address : NULL, new_length, prot < 0 ? PROT_NONE : prot,
			    MAP_PRIVATE | MAP_ANONYMOUS | (flags & MREMAP_FIXED ? MAP_FIXED : 0), r.malloc_block);
	if (p == MAP_FAILED)
		return p;
	int fresh = find_region((uintptr_t)p);
	if (copy_data(r.fd, r.offset, regions[fresh].fd, 0, r.length) != 0) {
		int e = errno;
		sys_munmap(p, new_length);
		forget_range((uintptr_t)p, new_length);
		errno = e;
		return MAP_FAILED;
	}
	sys_munmap((void *)r.start, r.length);
	forget_range(r.start, r.length);
	return p;
}

void *mremap(void *old_address, size_t old_size, size_t new_size, int flags, ...)
{
	void *new_address = NULL;
	if (flags & MREMAP_FIXED) {
		va_list ap;
		va_start(ap, flags);
		new_address = va_arg(ap, void *);
		va_end(ap);
	}
	uintptr_t old = (uintptr_t)old_address;
	pthread_mutex_lock(&lock);
	if (!overlaps(old, old_size ? page_round(old_size) : 1)) {
		void *p = (void *)syscall(SYS_mremap, old_address, old_size, new_size, flags, new_address);
		if (p != MAP_FAILED && (flags & MREMAP_FIXED))
			forget_range((uintptr_t)p, page_round(new_size));
		pthread_mutex_unlock(&lock);
		return p;
	}
	void *p = MAP_FAILED;
	old_size = page_round(old_size);
	new_size = page_round(new_size);
	if (old_size == 0 || (flags & MREMAP_DONTUNMAP) || new_size == 0) {
		errno = EINVAL;
		goto out;
	}
	isolate(old, old_size);
	int i = find_region(old);
	if (i < 0 || regions[i].length != old_size) {
		errno = EFAULT;
		goto out;
	}
	if (new_size <= old_size) {
		struct region r = regions[i];
		p = (void *)syscall(SYS_mremap, old_address, old_size, new_size, flags, new_address);
		if (p != MAP_FAILED) {
			if (flags & MREMAP_FIXED)
				forget_range((uintptr_t)p, new_size);
			i = find_region(old);
			regions[i].start = (uintptr_t)p;
			regions[i].length = new_size;
			if (new_size < old_size)
				fallocate(r.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r.offset + (off_t)new_size,
					  (off_t)(old_size - new_size));
		}
		goto out;
	}
	if (flags & MREMAP_FIXED)
		forget_range((uintptr_t)new_address, new_size);
	i = find_region(old);
	p = grow_region(i, new_size, flags, new_address);
out:
	pthread_mutex_unlock(&lock);
	return p;
}

int madvise(void *addr, size_t length, int advice)
{
	if (advice == MADV_DONTNEED || advice == MADV_FREE) {
		uintptr_t a = (uintptr_t)addr, b = a + page_round(length);
		int ours = 0;
		pthread_mutex_lock(&lock);
		for (int i = 0; i < region_count; i++) {
			struct region *r = &regions[i];
			uintptr_t from = a > r->start ? a : r->start;
			uintptr_t to = b < r->start + r->length ? b : r->start + r->length;
			if (from < to) {
				ours = 1;
				fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					  r->offset + (off_t)(from - r->start), (off_t)(to - from));
			}
		}
		pthread_mutex_unlock(&lock);
		if (ours) /* MADV_FREE lets the kernel free the pages, MADV_DONTNEED frees them: both read zeros now */
			advice = MADV_DONTNEED;
	}
	return (int)syscall(SYS_madvise, addr, length, advice);
}

/* malloc: large blocks from birth memfds when the next malloc is glibc's, everything else forwarded. */

static void *bootstrap_alloc(size_t size)
{
	size = (size + 15) & ~15UL;
	if (bootstrap_used + size > sizeof bootstrap)
		return NULL;
	void *p = bootstrap + bootstrap_used;
	bootstrap_used += size;
	return p;
}

static int in_bootstrap(void *p) { return (char *)p >= bootstrap && (char *)p < bootstrap + sizeof bootstrap; }

static void resolve(void)
{
	if (next_malloc || resolving)
		return;
	resolving = 1;
	next_calloc = dlsym(RTLD_NEXT, "calloc");
	next_realloc = dlsym(RTLD_NEXT, "realloc");
	next_free = dlsym(RTLD_NEXT, "free");
	next_usable_size = dlsym(RTLD_NEXT, "malloc_usable_size");
	void *(*found)(size_t) = dlsym(RTLD_NEXT, "malloc");
	const char *mode = getenv("WORKBENCH_MEMFD_BIRTH_MALLOC");
	if (mode && strcmp(mode, "off") == 0)
		take_malloc = 0;
	else
		take_malloc = found == __libc_malloc || (mode && strcmp(mode, "on") == 0);
	next_malloc = found;
	resolving = 0;
}

/* The birth region of a malloc block, or -1 (the lock is held). */
static int block_region(void *p)
{
	if (((uintptr_t)p & (PAGE - 1)) != HEADER)
		return -1;
	int i = find_region((uintptr_t)p - HEADER);
	return i >= 0 && regions[i].malloc_block ? i : -1;
}

static void *birth_block(size_t size)
{
	if (size > SIZE_MAX - HEADER - PAGE) {
		errno = ENOMEM;
		return NULL;
	}
	pthread_mutex_lock(&lock);
	void *p = birth_map(NULL, page_round(size + HEADER), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, 1);
	if (p == MAP_FAILED)
		fallbacks++;
	pthread_mutex_unlock(&lock);
	return p == MAP_FAILED ? NULL : (char *)p + HEADER;
}

static int ours(void *p)
{
	if (!take_malloc || ((uintptr_t)p & (PAGE - 1)) != HEADER)
		return 0;
	pthread_mutex_lock(&lock);
	int i = block_region(p);
	pthread_mutex_unlock(&lock);
	return i >= 0;
}

void *malloc(size_t size)
{
	resolve();
	if (!next_malloc)
		return bootstrap_alloc(size);
	if (take_malloc && enabled && size >= threshold) {
		void *p = birth_block(size);
		if (p)
			return p;
	}
	return next_malloc(size);
}

void *calloc(size_t count, size_t size)
{
	size_t total;
	if (__builtin_mul_overflow(count, size, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	resolve();
	if (!next_malloc) {
		void *p = bootstrap_alloc(total);
		return p ? memset(p, 0, total) : NULL;
	}
	if (take_malloc && enabled && total >= threshold) {
		void *p = birth_block(total); /* a fresh memfd reads zeros */
		if (p)
			return p;
	}
	return next_calloc(count, size);
}

void free(void *p)
{
	if (!p || in_bootstrap(p))
		return;
	if (take_malloc && ((uintptr_t)p & (PAGE - 1)) == HEADER) {
		pthread_mutex_lock(&lock);
		int i = block_region(p);
		if (i >= 0) {
			struct region r = regions[i];
			sys_munmap((void *)r.start, r.length);
			forget_range(r.start, r.length);
			pthread_mutex_unlock(&lock);
			return;
		}
		pthread_mutex_unlock(&lock);
	}
	resolve();
	if (next_free) /* else: called while the next allocator is being looked up; the block leaks */
		next_free(p);
}

size_t malloc_usable_size(void *p)
{
	if (!p)
		return 0;
	if (in_bootstrap(p))
		return 0;
	if (take_malloc && ((uintptr_t)p & (PAGE - 1)) == HEADER) {
		pthread_mutex_lock(&lock);
		int i = block_region(p);
		size_t n = i >= 0 ? regions[i].length - HEADER : 0;
		pthread_mutex_unlock(&lock);
		if (i >= 0)
			return n;
	}
	resolve();
	return next_usable_size ? next_usable_size(p) : 0;
}

void *realloc(void *p, size_t size)
{
	resolve();
	if (!p)
		return malloc(size);
	if (in_bootstrap(p)) {
		void *q = malloc(size);
		if (q)
			memcpy(q, p, size < (size_t)(bootstrap + sizeof bootstrap - (char *)p)
					 ? size
					 : (size_t)(bootstrap + sizeof bootstrap - (char *)p));
		return q;
	}
	if (ours(p)) {
		if (size == 0) {
			free(p);
			return NULL;
		}
		size_t usable = malloc_usable_size(p);
		if (size >= threshold) {
			pthread_mutex_lock(&lock);
			uintptr_t base = (uintptr_t)p - HEADER;
			int i = find_region(base);
			size_t want = page_round(size + HEADER);
			void *q = MAP_FAILED;
			if (want == regions[i].length)
				q = (void *)base;
			else if (want < regions[i].length) {
				q = (void *)syscall(SYS_mremap, base, regions[i].length, want, 0);
				if (q != MAP_FAILED) {
					fallocate(regions[i].fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
						  regions[i].offset + (off_t)want, (off_t)(regions[i].length - want));
					regions[i].length = want;
				}
			} else {
				q = grow_region(i, want, MREMAP_MAYMOVE, NULL);
			}
			pthread_mutex_unlock(&lock);
			return q == MAP_FAILED ? NULL : (char *)q + HEADER;
		}
		void *q = next_malloc(size);
		if (q) {
			memcpy(q, p, size < usable ? size : usable);
			free(p);
		}
		return q;
	}
	if (take_malloc && enabled && size >= threshold) {
		void *q = birth_block(size);
		if (q) {
			size_t usable = next_usable_size(p);
			memcpy(q, p, size < usable ? size : usable);
			next_free(p);
			return q;
		}
	}
	return next_realloc(p, size);
}

void *reallocarray(void *p, size_t count, size_t size)
{
	size_t total;
	if (__builtin_mul_overflow(count, size, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc(p, total);
}

/* fork */

static void announce(void)
{
	const char *dir = getenv("WORKBENCH_MEMFD_BIRTH_DIR");
	if (!dir || !*dir)
		return;
	char path[PATH_MAX], temporary[PATH_MAX], text[512];
	pid_t pid = getpid();
	static const char *policies[] = {"copy", "refuse", "share"};
	int n = snprintf(text, sizeof text,
			 "{\"pid\": %d, \"threshold\": %zu, \"fork\": \"%s\", \"malloc\": \"%s\", \"memfd_name\": \"%s\"}\n",
			 (int)pid, threshold, policies[fork_policy], take_malloc ? "glibc-large-blocks" : "forwarded",
			 MEMFD_NAME);
	snprintf(path, sizeof path, "%s/%d.json", dir, (int)pid);
	snprintf(temporary, sizeof temporary, "%s/.%d.json.tmp", dir, (int)pid);
	int fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	int ok = write(fd, text, (size_t)n) == n && fsync(fd) == 0;
	close(fd);
	if (!ok || rename(temporary, path) != 0)
		unlink(temporary);
}

/* In the child of a fork (one thread): every birth mapping (the kernel's maps are the truth at the instant of the
 * fork) is copied into a fresh memfd mapped at the same address, the parent's memfds are closed, and the table is
 * rebuilt. Returns 0, or -1 with errno. */
static int take_private_copies(void)
{
	if (read_own_maps() != 0)
		return -1;
	static int inherited[MAX_REGIONS]; /* the child runs this with one thread */
	int inherited_count = 0;
	for (int i = 0; i < region_count; i++) {
		int seen = 0;
		for (int j = 0; j < inherited_count; j++)
			seen |= inherited[j] == regions[i].fd;
		if (!seen && inherited_count < (int)(sizeof inherited / sizeof *inherited))
			inherited[inherited_count++] = regions[i].fd;
	}
	int result = 0;
	region_count = 0;
	for (char *line = maps_buffer; line && *line;) {
		char *end = strchr(line, '\n');
		if (end)
			*end = 0;
		unsigned long from, to, offset, inode;
		char perms[5];
		int path_at = 0;
		if (sscanf(line, "%lx-%lx %4s %lx %*x:%*x %lu %n", &from, &to, perms, &offset, &inode, &path_at) == 5 &&
		    path_at && strncmp(line + path_at, "/memfd:" MEMFD_NAME, strlen("/memfd:" MEMFD_NAME)) == 0) {
			int old = -1;
			for (int j = 0; j < inherited_count && old < 0; j++) {
				struct stat st;
				if (fstat(inherited[j], &st) == 0 && st.st_ino == inode)
					old = inherited[j];
			}
			size_t length = to - from;
			int prot = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
				   (perms[2] == 'x' ? PROT_EXEC : 0);
			int fresh = memfd_create(MEMFD_NAME, MFD_CLOEXEC);
			if (old < 0 || fresh < 0 || ftruncate(fresh, (off_t)length) != 0 ||
			    copy_data(old, (off_t)offset, fresh, 0, length) != 0 ||
			    sys_mmap((void *)from, length, prot, MAP_SHARED | MAP_FIXED, fresh, 0) == MAP_FAILED) {
				result = -1;
				if (fresh >= 0)
					close(fresh);
			} else {
				add_region(from, length, fresh, 0, 0);
			}
		}
		line = end ? end + 1 : NULL;
	}
	for (int j = 0; j < inherited_count; j++)
		close(inherited[j]);
	return result;
}

pid_t fork(void)
{
	if (!next_fork)
		next_fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
	pthread_mutex_lock(&lock);
	int have = region_count > 0;
	static uintptr_t blocks[MAX_REGIONS]; /* filled under the lock */
	int block_count = 0;
	for (int i = 0; i < region_count && block_count < (int)(sizeof blocks / sizeof *blocks); i++)
		if (regions[i].malloc_block)
			blocks[block_count++] = regions[i].start;
	pthread_mutex_unlock(&lock);
	if (!have || fork_policy == FORK_SHARE)
		return next_fork();
	if (fork_policy == FORK_REFUSE) {
		say("memfd_birth: fork refused: this process has birth memfd mappings, which a child would share "
		    "instead of copying (WORKBENCH_MEMFD_BIRTH_FORK=refuse; use copy or share)\n");
		errno = ENOMEM;
		return -1;
	}
	int done[2];
	if (pipe2(done, O_CLOEXEC) != 0)
		return -1;
	pid_t pid = next_fork();
	if (pid == 0) {
		pthread_mutex_init(&lock, NULL);
		close(done[0]);
		if (take_private_copies() != 0) {
			say("memfd_birth: the child %d could not copy its birth mappings (%s); it exits\n", (int)getpid(),
			    strerror(errno));
			_exit(127);
		}
		for (int b = 0; b < block_count; b++) {
			int i = find_region(blocks[b]);
			if (i >= 0)
				regions[i].malloc_block = 1;
		}
		announce();
		(void)!write(done[1], "", 1);
		close(done[1]);
		return 0;
	}
	close(done[1]);
	if (pid > 0) {
		char byte;
		while (read(done[0], &byte, 1) < 0 && errno == EINTR)
			;
	}
	close(done[0]);
	return pid;
}

__attribute__((constructor)) static void start(void)
{
	const char *v = getenv("WORKBENCH_MEMFD_BIRTH_MIN");
	if (v && *v) {
		char *end;
		unsigned long long n = strtoull(v, &end, 10);
		if (*end == 0 && n >= PAGE)
			threshold = (size_t)n;
		else
			say("memfd_birth: WORKBENCH_MEMFD_BIRTH_MIN=%s is not a whole number of bytes of at least %lu; "
			    "keeping %zu\n", v, PAGE, threshold);
	}
	const char *policy = getenv("WORKBENCH_MEMFD_BIRTH_FORK");
	if (policy && strcmp(policy, "refuse") == 0)
		fork_policy = FORK_REFUSE;
	else if (policy && strcmp(policy, "share") == 0)
		fork_policy = FORK_SHARE;
	else if (policy && *policy && strcmp(policy, "copy") != 0)
		say("memfd_birth: WORKBENCH_MEMFD_BIRTH_FORK=%s is not copy, refuse or share; copying\n", policy);
	const char *off = getenv("WORKBENCH_MEMFD_BIRTH_DISABLE");
	enabled = !(off && strcmp(off, "1") == 0);
	resolve();
	announce();
}

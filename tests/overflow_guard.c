/* LD_PRELOAD shim for tests/test_onednn.py: every posix_memalign block of at
 * least GUARD_MIN bytes (default 4096; oneDNN allocates its scratch buffers so)
 * ends right before a PROT_NONE page, so a write past its end faults at the
 * writing instruction instead of corrupting the heap silently.
 * Build: cc -O2 -shared -fPIC -o overflow_guard.so overflow_guard.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#define MAGIC 0x6775617264303132ULL
typedef struct { uint64_t magic; void *base; size_t len; } header_t;

static void (*real_free)(void *);
static int (*real_memalign)(void **, size_t, size_t);
static size_t guard_min = 4096;

static void init(void) {
  if (!real_free) {
    real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    real_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    const char *env = getenv("GUARD_MIN");
    if (env) guard_min = strtoul(env, 0, 10);
  }
}

int posix_memalign(void **out, size_t align, size_t size) {
  init();
  if (size < guard_min || size > ((size_t)256 << 20) || align > 2048)
    return real_memalign(out, align, size);
  size_t page = 4096, a = align < 64 ? 64 : align;
  size_t user = (size + a - 1) / a * a;
  size_t pages = (user + sizeof(header_t) + a + page - 1) / page;
  size_t len = (pages + 1) * page;
  char *base = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return ENOMEM;
  char *guard = base + pages * page;
  mprotect(guard, page, PROT_NONE);
  char *p = guard - user;
  if (((uintptr_t)p & 4095) == 0) p -= a;  /* keep the header on p's page */
  header_t *h = (header_t *)(p - sizeof(header_t));
  h->magic = MAGIC; h->base = base; h->len = len;
  *out = p;
  return 0;
}

void free(void *p) {
  init();
  if (p && ((uintptr_t)p & 4095) >= sizeof(header_t)) {
    header_t *h = (header_t *)((char *)p - sizeof(header_t));
    if (h->magic == MAGIC) { h->magic = 0; munmap(h->base, h->len); return; }
  }
  real_free(p);
}

/* Handler stacks: the pool, guard pages, first frames, switching, and stack overflow.
 *
 * A stack is a guard page at the bottom, the usable bytes, and its descriptor
 * (ar__stack_t) in a page at the very top. Stacks are pooled per scheduler (up to
 * LOCAL_MAX) over a node-wide list, because a fresh one costs microseconds in mmap and
 * page faults while a pooled one costs nanoseconds. Every stack has its guard page; there
 * are no unguarded stacks, so an overflow never corrupts memory.
 *
 * Guards: where the kernel has guard regions (Linux 6.13's MADV_GUARD_INSTALL), a guard
 * page costs no memory mapping, so stacks are carved from chunks of CHUNK_STACKS, one
 * mapping each, and there can be as many as memory allows. Elsewhere (older kernels, or
 * built with -DAR_STACK_MPROTECT) a guard is an mprotect'ed page, two mappings a stack,
 * and the kernel's map count (vm.max_map_count, 65530 by default) bounds them: at most a
 * quarter of it are made, leaving the rest to the program. A process that needs a stack
 * to block when none can be made gets AR_ENOMEM from its blocking call.
 *
 * Switching: a few lines of assembly per CPU (ctx_x86_64.S); elsewhere, or with
 * -DAR_CTX_UCONTEXT, the portable ucontext fallback (correct, but each switch costs a
 * system call for the signal mask).
 *
 * Overflow: gcc's -fstack-clash-protection makes every frame touch its pages in order, so
 * running off a stack faults on its guard page. The SIGSEGV handler runs on the
 * scheduler's alternate signal stack, sees the fault in the running stack's guard page,
 * flags the running process and unwinds it to its catch frame, where its exit path ends
 * it with AR_ERROR "stack overflow". Any other fault goes to the previous handler.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define AR_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AR_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define AR_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define AR_TSAN 1
#endif
#endif
#ifdef AR_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef AR_TSAN
#include <sanitizer/tsan_interface.h>
#endif

/* Free stacks a scheduler keeps for itself before it gives them to the node's list. */
#define LOCAL_MAX 16
/* Stacks per mapping where guard regions make guards free. */
#define CHUNK_STACKS 32
/* Without guard regions: the share of the kernel's map count stacks may take (each takes
 * two mappings, so a quarter of the count in stacks is half of it in mappings). */
#define MAP_COUNT_SHARE 4
#define DEFAULT_MAP_COUNT 65530
/* madvise advice of Linux 6.13: install guard pages without a mapping of their own. */
#define ADVICE_GUARD_INSTALL 102
#define ALTSTACK_BYTES (256 * 1024) /* roomy: sanitizers run their reports on it too */
#define TSAN_REUSES 64

static _Atomic long guarded_live; /* mprotect-guarded stacks alive, in the whole program */
static long guarded_max;
static bool guard_regions; /* the kernel installs guard pages without mappings */
static size_t page_size;

/* A chunk's first page holds its header; its stacks follow. */
struct ar__stack_chunk {
    struct ar__stack_chunk *next;
    size_t len;
};

/* Fills in a stack's descriptor at the top of [guard, guard + slot). */
static ar__stack_t *describe(char *guard, size_t slot)
{
    ar__stack_t *st = (ar__stack_t *)(guard + slot - page_size);
    memset(st, 0, sizeof *st);
    st->guard = guard;
    st->base = guard + page_size;
    st->size = (size_t)((char *)st - st->base) & ~(size_t)15;
#ifdef AR_TSAN
    st->san_fiber = __tsan_create_fiber(0);
#endif
    return st;
}

static size_t slot_bytes(size_t usable)
{
    return page_size + ((usable + page_size - 1) & ~(page_size - 1)) + page_size;
}

/* A stack from the node's chunks (stack_lock held). */
static ar__stack_t *carve(ar_node_t *node)
{
    size_t slot = slot_bytes(node->stack_size);
    if (!node->chunk_left) {
        size_t len = page_size + CHUNK_STACKS * slot;
        char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (m == MAP_FAILED) return NULL;
        for (size_t i = 0; i < CHUNK_STACKS; i++)
            if (madvise(m + page_size + i * slot, page_size, ADVICE_GUARD_INSTALL) != 0) {
                munmap(m, len);
                return NULL;
            }
        struct ar__stack_chunk *c = (struct ar__stack_chunk *)m;
        c->next = node->stack_chunks;
        c->len = len;
        node->stack_chunks = c;
        node->chunk_next = m + page_size;
        node->chunk_left = CHUNK_STACKS;
    }
    char *guard = node->chunk_next;
    node->chunk_next += slot;
    node->chunk_left--;
    return describe(guard, slot);
}

/* A stack of its own, guarded by an mprotect'ed page, within the map count's share. */
static ar__stack_t *map_own(ar_node_t *node)
{
    if (atomic_fetch_add_explicit(&guarded_live, 1, memory_order_relaxed) >= guarded_max) {
        atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
        return NULL; /* no unguarded stacks: the blocking call fails instead */
    }
    size_t len = slot_bytes(node->stack_size);
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m != MAP_FAILED && mprotect(m, page_size, PROT_NONE) == 0) {
        ar__stack_t *st = describe(m, len);
        st->map_len = len;
        return st;
    }
    if (m != MAP_FAILED) munmap(m, len);
    atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
    return NULL;
}

void ar__stack_destroy(ar__stack_t *st)
{
#ifdef AR_TSAN
    if (st->san_fiber) __tsan_destroy_fiber(st->san_fiber);
#endif
    if (st->map_len) { /* a mapping of its own; a chunk's stacks go with their chunk */
        munmap(st->guard, st->map_len);
        atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
    }
}

void ar__stacks_destroy(ar_node_t *node)
{
    while (node->stacks) {
        ar__stack_t *st = node->stacks;
        node->stacks = st->next_free;
        ar__stack_destroy(st);
    }
    while (node->stack_chunks) {
        struct ar__stack_chunk *c = node->stack_chunks;
        node->stack_chunks = c->next;
        munmap(c, c->len);
    }
}

ar__stack_t *ar__stack_get(ar__sched_t *s)
{
    ar__stack_t *st = s->stacks;
    if (st) {
        s->stacks = st->next_free;
        s->nstacks--;
        return st;
    }
    ar_node_t *node = s->node;
    pthread_mutex_lock(&node->stack_lock);
    st = node->stacks;
    if (st)
        node->stacks = st->next_free;
    else if (guard_regions)
        st = carve(node);
    pthread_mutex_unlock(&node->stack_lock);
    if (!st && !guard_regions) st = map_own(node);
    return st;
}

void ar__stack_put(ar__sched_t *s, ar__stack_t *st)
{
    st->catch_top = NULL;
    if (s->nstacks < LOCAL_MAX) {
        st->next_free = s->stacks;
        s->stacks = st;
        s->nstacks++;
        return;
    }
    ar_node_t *node = s->node;
    pthread_mutex_lock(&node->stack_lock);
    st->next_free = node->stacks;
    node->stacks = st;
    pthread_mutex_unlock(&node->stack_lock);
}

/* ASan: frames abandoned by an unwind or by a loop that moved on leave poisoned shadow
 * behind; a stack must be clean below the frames that will use it. */
void ar__stack_unpoison_below(ar__stack_t *st, const void *addr)
{
#ifdef AR_ASAN
    if (st && (const char *)addr > st->base)
        __asan_unpoison_memory_region(st->base, (size_t)((const char *)addr - st->base));
#else
    (void)st;
    (void)addr;
#endif
}

#ifdef AR__CTX_UCONTEXT
/* The portable fallback's first frame: makecontext passes no pointer portably, so the
 * entry reads it from the stack the scheduler is switching to. */
static void uc_entry(void)
{
    ar__stack_t *st = ar__current_sched()->cur_stack;
    st->entry_fn(st->entry_arg);
}
#endif

void ar__stack_prepare(ar__stack_t *st, void (*fn)(void *), void *arg)
{
    ar__stack_unpoison_below(st, st->base + st->size);
#ifdef AR_TSAN
    /* Each reuse leaves the abandoned loop frames of its last use on the fiber's shadow
     * stack, which TSan caps at 65536 frames; a new fiber is costly (TSan allocates a
     * thread state for it), so renew it every TSAN_REUSES reuses: a few hundred frames. */
    if (++st->san_uses >= TSAN_REUSES) {
        __tsan_destroy_fiber(st->san_fiber);
        st->san_fiber = __tsan_create_fiber(0);
        st->san_uses = 0;
    }
#endif
    st->catch_top = NULL;
#ifdef AR__CTX_UCONTEXT
    getcontext(&st->uc);
    st->uc.uc_stack.ss_sp = st->base;
    st->uc.uc_stack.ss_size = st->size;
    st->uc.uc_link = NULL;
    st->entry_fn = fn;
    st->entry_arg = arg;
    makecontext(&st->uc, uc_entry, 0);
#else
    extern void ar__ctx_entry(void);
    uint64_t *sp = (uint64_t *)(((uintptr_t)(st->base + st->size)) & ~(uintptr_t)15);
    *--sp = (uint64_t)(uintptr_t)ar__ctx_entry; /* returned into; leaves sp 16-aligned */
    *--sp = 0;                                   /* rbp: ends frame-pointer backtraces */
    *--sp = 0;                                   /* rbx */
    *--sp = (uint64_t)(uintptr_t)arg;            /* r12 */
    *--sp = (uint64_t)(uintptr_t)fn;             /* r13 */
    *--sp = 0;                                   /* r14 */
    *--sp = 0;                                   /* r15 */
    *--sp = 0x1F80ull | (0x037Full << 32);       /* default MXCSR and x87 control word */
    st->sp = sp;
#endif
}

void ar__switch_native_init(ar__sched_t *s)
{
    memset(&s->native, 0, sizeof s->native);
#ifdef AR_ASAN
    pthread_attr_t a;
    if (pthread_getattr_np(pthread_self(), &a) == 0) {
        void *addr;
        size_t size;
        pthread_attr_getstack(&a, &addr, &size);
        s->native.base = addr;
        s->native.size = size;
        pthread_attr_destroy(&a);
    }
#endif
#ifdef AR_TSAN
    s->native.san_fiber = __tsan_get_current_fiber();
#endif
}

void ar__switch(ar__stack_t *from, ar__stack_t *to)
{
#ifdef AR_ASAN
    __sanitizer_start_switch_fiber(NULL, to->base, to->size);
#endif
#ifdef AR_TSAN
    __tsan_switch_to_fiber(to->san_fiber, 0);
#endif
#ifdef AR__CTX_UCONTEXT
    static _Thread_local ucontext_t abandoned; /* a context never resumed */
    swapcontext(from ? &from->uc : &abandoned, &to->uc);
#else
    void *junk;
    ar__ctx_switch(from ? &from->sp : &junk, to->sp);
#endif
}

void ar__switch_done(ar__sched_t *s)
{
    (void)s;
#ifdef AR_ASAN
    __sanitizer_finish_switch_fiber(NULL, NULL, NULL);
#endif
}

/* ---- overflow ---- */
static struct sigaction old_segv, old_bus;
static pthread_once_t signals_once = PTHREAD_ONCE_INIT;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    ar__sched_t *s = ar__tls_sched;
    ar__stack_t *st = s ? s->cur_stack : NULL;
    ar_proc_t *p = ar__tls_proc;
    char *a = si->si_addr;
    if (st && p && a >= st->guard && a < st->base && p->stack == st && st->catch_top) {
        atomic_fetch_or_explicit(&p->flags, P_OVERFLOW | P_EXITING, memory_order_relaxed);
        ar__proc_unwind(p);
    }
    /* not ours: let the previous disposition have it (the fault repeats on return) */
    sigaction(sig, sig == SIGSEGV ? &old_segv : &old_bus, NULL);
    (void)uc;
}

/* Whether the kernel installs guard pages without mappings: tried on a scratch mapping. */
static bool probe_guard_regions(void)
{
#ifdef AR_STACK_MPROTECT
    return false;
#else
    char *m = mmap(NULL, 2 * page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (m == MAP_FAILED) return false;
    bool ok = madvise(m, page_size, ADVICE_GUARD_INSTALL) == 0;
    munmap(m, 2 * page_size);
    return ok;
#endif
}

static long map_count_limit(void)
{
    long n = DEFAULT_MAP_COUNT;
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    if (f) {
        if (fscanf(f, "%ld", &n) != 1 || n <= 0) n = DEFAULT_MAP_COUNT;
        fclose(f);
    }
    return n;
}

static void install(void)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    guard_regions = probe_guard_regions();
    guarded_max = map_count_limit() / MAP_COUNT_SHARE;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
}

int ar__stack_signals_init(void)
{
    pthread_once(&signals_once, install);
    return 0;
}

int ar__sched_altstack_init(ar__sched_t *s)
{
    size_t len = ALTSTACK_BYTES;
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return AR_ENOMEM;
    stack_t ss = {.ss_sp = m, .ss_size = len, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        munmap(m, len);
        return AR_ENOMEM;
    }
    s->altstack = m;
    return 0;
}

void ar__sched_altstack_destroy(ar__sched_t *s)
{
    if (!s->altstack) return;
    stack_t ss = {.ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE};
    sigaltstack(&ss, NULL);
    munmap(s->altstack, ALTSTACK_BYTES);
    s->altstack = NULL;
}

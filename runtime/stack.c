/* Handler stacks: the pool, guard pages, first frames, switching, and stack overflow.
 *
 * A stack is one mapping: a PROT_NONE guard page at the bottom, the usable bytes, and
 * its descriptor (ar__stack_t) at the very top. Stacks are pooled per scheduler (up to
 * LOCAL_MAX) over a node-wide list, because a fresh one costs microseconds in mmap and
 * page faults while a pooled one costs nanoseconds.
 *
 * The kernel allows about 65k mappings and each guarded stack takes two, so at most
 * GUARDED_MAX guarded stacks exist at once. Beyond that, stacks come from the heap without
 * a guard page, with a canary at the bottom that is checked every time the stack is
 * switched away from: an overflow there is detected (and aborts with a message) instead
 * of silently corrupting a neighbour. Enough processes blocked at once to need those is
 * rare; the guarded pool serves everything else.
 *
 * Switching: a few lines of assembly per CPU (ctx_x86_64.S); elsewhere, or with
 * -DAR_CTX_UCONTEXT, the portable ucontext fallback (correct, but each switch costs a
 * system call for the signal mask).
 *
 * Overflow: gcc's -fstack-clash-protection makes every frame touch its pages in order, so
 * running off a guarded stack faults on the guard page. The SIGSEGV handler runs on the
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

#define LOCAL_MAX 16
#define GUARDED_MAX 16384
#define CANARY 0x6172626f72737463ull /* "arborstc" */
#define CANARY_WORDS 8
#define TSAN_REUSES 64

static _Atomic long guarded_live;
static size_t page_size;

static ar__stack_t *stack_new(size_t size)
{
    size_t usable = (size + page_size - 1) & ~(page_size - 1);
    size_t desc = (sizeof(ar__stack_t) + 63) & ~(size_t)63;
    ar__stack_t *st;
    if (atomic_fetch_add_explicit(&guarded_live, 1, memory_order_relaxed) < GUARDED_MAX) {
        size_t len = page_size + usable + page_size; /* guard, stack, descriptor page */
        char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (m == MAP_FAILED) {
            atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
            return NULL;
        }
        if (mprotect(m, page_size, PROT_NONE) != 0) {
            munmap(m, len);
            atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
            return NULL;
        }
        st = (ar__stack_t *)(m + len - desc);
        memset(st, 0, sizeof *st);
        st->map = m;
        st->map_len = len;
        st->base = m + page_size;
        st->size = (size_t)((char *)st - st->base) & ~(size_t)15;
    } else {
        atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
        char *m = ar__malloc(usable + desc + 64);
        if (!m) return NULL;
        char *base = (char *)(((uintptr_t)m + 63) & ~(uintptr_t)63);
        st = (ar__stack_t *)(base + usable);
        memset(st, 0, sizeof *st);
        st->map = NULL;
        st->map_len = (size_t)(uintptr_t)m; /* the heap block, to free */
        st->base = base;
        st->size = usable;
        for (int i = 0; i < CANARY_WORDS; i++) ((uint64_t *)base)[i] = CANARY;
    }
#ifdef AR_TSAN
    st->san_fiber = __tsan_create_fiber(0);
#endif
    return st;
}

void ar__stack_destroy(ar__stack_t *st)
{
#ifdef AR_TSAN
    if (st->san_fiber) __tsan_destroy_fiber(st->san_fiber);
#endif
    if (st->map) {
        munmap(st->map, st->map_len);
        atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
    } else {
        ar__free((void *)(uintptr_t)st->map_len);
    }
}

void ar__stack_check_canary(ar__stack_t *st)
{
    if (st->map) return;
    for (int i = 0; i < CANARY_WORDS; i++)
        if (((uint64_t *)st->base)[i] != CANARY)
            ar__panic(__FILE__, __LINE__, "stack overflow on an unguarded stack (%zu bytes)",
                      st->size);
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
    if (st) node->stacks = st->next_free;
    pthread_mutex_unlock(&node->stack_lock);
    if (st) return st;
    return stack_new(node->stack_size);
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
    ar__sched_t *s = ar__current_sched();
    if (s->cur_stack && s->cur_stack != to) ar__stack_check_canary(s->cur_stack);
#ifdef AR_ASAN
    __sanitizer_start_switch_fiber(NULL, to->base, to->size);
#endif
#ifdef AR_TSAN
    __tsan_switch_to_fiber(to->san_fiber, 0);
#endif
    (void)s;
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
    if (st && st->map && p && a >= (char *)st->map && a < st->base && p->stack == st &&
        st->catch_top) {
        atomic_fetch_or_explicit(&p->flags, P_OVERFLOW | P_EXITING, memory_order_relaxed);
        ar__proc_unwind(p);
    }
    /* not ours: let the previous disposition have it (the fault repeats on return) */
    sigaction(sig, sig == SIGSEGV ? &old_segv : &old_bus, NULL);
    (void)uc;
}

static void install(void)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
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
    size_t len = 256 * 1024; /* roomy: sanitizers run their reports on it too */
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
    munmap(s->altstack, 256 * 1024);
    s->altstack = NULL;
}

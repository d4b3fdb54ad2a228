/* pool.c — the thread pool every CPU kernel runs on.
 * Run by: metal/cpu/planes.c, metal/cpu/decode.c (built by engine.runtime.native).
 *
 * Workers spin briefly between jobs (a decode step hands out hundreds of jobs per token: ~100 us covers
 * the gaps inside a step and between steps) and then sleep, so an idle engine leaves the cores to others.
 * Every job claims its work units with atomic counters, so the caller alone can finish any job when the
 * OS has not scheduled a worker in time. On a busy machine a worker can be descheduled in the middle of
 * a unit and the caller then waits for it: the pool measures that wait against the caller's own work
 * and, when waiting costs more than the worker brings, runs the next jobs on the caller alone, then
 * tries again (a shared machine gets one busy thread, not two that stall each other).
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define SPIN_NS 100000L    /* a worker spins this long for the next job, then sleeps */
#define SOLO_JOBS 2048     /* jobs run on the caller alone once waiting for workers cost more than they gave */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#define ECPU_MAXT 64
typedef void (*job_fn)(void *arg, int tid);
static int g_nthreads = 1, g_started = 0;
static pthread_t g_th[ECPU_MAXT];
static atomic_uint g_gen;
static atomic_int g_open, g_active, g_stop, g_nsleep;
/* Join protocol: a job is open from pool_run's start until the caller has finished its own share; a worker
   registers in g_active and then joins only if the job is still open, so a worker that the OS has not
   scheduled in time (oversubscribed machine) never makes the caller wait: all jobs claim their work units
   with atomic counters, so the caller alone can complete any job. */
static job_fn g_fn; static void *g_arg;
static unsigned g_gen_at_start; /* generation seen by workers at creation (avoids a start-up race) */
static pthread_mutex_t g_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
static void *worker_main(void *p) {
    int tid = (int)(intptr_t)p;
    unsigned seen = g_gen_at_start;
    for (;;) {
        long spins = 0;
        unsigned g;
        double since = now_s();
        while ((g = atomic_load_explicit(&g_gen, memory_order_acquire)) == seen && !atomic_load(&g_stop)) {
            if (++spins % 64 || now_s() - since < SPIN_NS * 1e-9) cpu_relax();
            else { /* idle: sleep */
                pthread_mutex_lock(&g_mtx);
                atomic_fetch_add(&g_nsleep, 1);
                while (atomic_load(&g_gen) == seen && !atomic_load(&g_stop)) pthread_cond_wait(&g_cv, &g_mtx);
                atomic_fetch_sub(&g_nsleep, 1);
                pthread_mutex_unlock(&g_mtx);
                spins = 0;
                since = now_s();
            }
        }
        if (atomic_load(&g_stop)) break;
        seen = g;
        atomic_fetch_add(&g_active, 1);                 /* seq_cst: pairs with the caller's g_open = 0 then g_active check */
        if (atomic_load(&g_open)) g_fn(g_arg, tid);
        atomic_fetch_sub_explicit(&g_active, 1, memory_order_release);
    }
    return NULL;
}
int ecpu_init(int nthreads) {
    if (nthreads <= 0) nthreads = 2;
    if (nthreads > ECPU_MAXT) nthreads = ECPU_MAXT;
    if (g_started) ecpu_shutdown();
    atomic_store(&g_stop, 0);
    g_nthreads = 1;
    g_gen_at_start = atomic_load(&g_gen);
    for (int t = 1; t < nthreads; t++) {
        if (pthread_create(&g_th[t], NULL, worker_main, (void *)(intptr_t)t) != 0) break;
        g_nthreads = t + 1;
    }
    g_started = 1;
    return g_nthreads;
}
void ecpu_shutdown(void) {
    if (!g_started) return;
    pthread_mutex_lock(&g_mtx);
    atomic_store(&g_stop, 1);
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mtx);
    for (int t = 1; t < g_nthreads; t++) pthread_join(g_th[t], NULL);
    g_nthreads = 1; g_started = 0;
}
static double g_own_ema, g_wait_ema; /* the caller's share of a job, and its wait for workers (seconds) */
static int g_solo_left;                /* jobs still to run on the caller alone */

/* run fn(arg, tid) on all threads (caller is tid 0) and wait */
static void pool_run(job_fn fn, void *arg) {
    if (g_nthreads <= 1) { fn(arg, 0); return; }
    if (g_solo_left > 0) {
        g_solo_left--;
        fn(arg, 0);
        return;
    }
    double t0 = now_s();
    g_fn = fn; g_arg = arg;
    atomic_store(&g_open, 1);
    atomic_fetch_add(&g_gen, 1); /* seq_cst: pairs with the sleeper's nsleep++ then gen check */
    if (atomic_load(&g_nsleep) > 0) { pthread_mutex_lock(&g_mtx); pthread_cond_broadcast(&g_cv); pthread_mutex_unlock(&g_mtx); }
    fn(arg, 0);                  /* returns when every work unit has been claimed and the caller's are done */
    atomic_store(&g_open, 0);    /* late workers skip the job from here on */
    double t1 = now_s();
    long spins = 0;
    while (atomic_load_explicit(&g_active, memory_order_acquire) != 0) {   /* workers inside the job: wait for their units */
        if (++spins < 20000) cpu_relax(); else sched_yield();   /* oversubscribed machine: let the worker run */
    }
    double t2 = now_s();
    g_own_ema = 0.95 * g_own_ema + 0.05 * (t1 - t0);
    g_wait_ema = 0.95 * g_wait_ema + 0.05 * (t2 - t1);
    if (g_wait_ema > g_own_ema && g_wait_ema > 20e-6) { /* the workers hold the caller up: go alone for a while */
        g_solo_left = SOLO_JOBS;
        g_wait_ema = 0.0;
    }
}

int ecpu_solo(void) { return g_solo_left > 0; }

/* run fn(arg, tid) on every pool thread, the caller included, and wait: work must be claimed with
   atomic counters (any thread may end up doing all of it) */
void ecpu_parallel(void (*fn)(void *arg, int tid), void *arg) { pool_run(fn, arg); }


int ecpu_threads(void) { return g_nthreads; }

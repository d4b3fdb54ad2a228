/* pool: the thread pool of the CPU kernels (see pool.c). */
#ifndef EFFORT_POOL_H
#define EFFORT_POOL_H
#ifdef __cplusplus
extern "C" {
#endif
/* start the pool: nthreads in all, the caller included (<= 0: 2). Returns the count in use. */
int ecpu_init(int nthreads);
void ecpu_shutdown(void);
/* threads in the pool, the caller included */
int ecpu_threads(void);
/* whether the pool is running jobs on the caller alone for now (workers held it up on a busy machine) */
int ecpu_solo(void);
/* fn(arg, tid) on every pool thread (the caller is tid 0), then wait; work is claimed with atomics */
void ecpu_parallel(void (*fn)(void *arg, int tid), void *arg);
#ifdef __cplusplus
}
#endif
#endif

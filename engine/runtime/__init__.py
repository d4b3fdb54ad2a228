"""Running a loaded model: the one `Runtime` interface (`base`) and its implementations — the native
C decode step on a CPU (`cpu_runtime` over `native`), MLX (`mlx_runtime`) with its effort path
(`effort_mlx`, GPU kernels in `effort_gpu` built from `kernel_source`) — and backend detection."""

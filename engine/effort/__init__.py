"""The effort algorithms in one place. `planes/` is the CPU's (effort as bytes read: the layout, its
numpy reference, its cache, calibration and allocation). bucketMul is the GPU backends': its layout
(`bucket`), its numpy reference (`reference`), how effort is spread over the matrices
(`allocation`), the calibration that measures it (`calibrate`) and the cached conversion of a model
to that layout (`convert`)."""

"""The effort algorithm in one place: the bucket layout (`bucket`), its numpy reference (`reference`),
how effort is spread over the matrices (`allocation`), the calibration that measures it
(`calibrate`) and the cached conversion of a model to that layout (`convert`)."""

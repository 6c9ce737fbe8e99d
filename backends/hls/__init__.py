"""The HLS target: a Vitis HLS C++ project per model, C-simulated with g++."""

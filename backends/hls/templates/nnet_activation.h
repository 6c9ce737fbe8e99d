// Elementwise layers: cast (round half up, saturate), clamp (relu, relu6), leaky relu,
// sigmoid/tanh by lookup tables generated in Python, softmax with an exp table and an integer
// division, and add.
#ifndef NNET_ACTIVATION_H_
#define NNET_ACTIVATION_H_

#include "nnet_common.h"

namespace nnet {

template <class in_t, class out_t, typename CONFIG_T>
void cast(const in_t x[CONFIG_T::n], out_t y[CONFIG_T::n]) {
#pragma HLS PIPELINE
    for (unsigned i = 0; i < CONFIG_T::n; i++) y[i] = (out_t)x[i];
}

// In place on codes of the result type (lo/hi are codes; has_lo/has_hi say whether bounded).
template <class T, typename CONFIG_T> void clamp(T y[CONFIG_T::n]) {
#pragma HLS PIPELINE
    for (unsigned i = 0; i < CONFIG_T::n; i++) {
        long long c = to_code(y[i]);
        if (CONFIG_T::has_lo && c < CONFIG_T::lo) c = CONFIG_T::lo;
        if (CONFIG_T::has_hi && c > CONFIG_T::hi) c = CONFIG_T::hi;
        y[i] = from_code<T>(c);
    }
}

template <class in_t, class out_t, typename CONFIG_T>
void leaky_relu(const in_t x[CONFIG_T::n], out_t y[CONFIG_T::n]) {
#pragma HLS PIPELINE
    const typename CONFIG_T::slope_t slope = from_code<typename CONFIG_T::slope_t>(CONFIG_T::slope);
    for (unsigned i = 0; i < CONFIG_T::n; i++) {
        if (x[i] < 0) y[i] = (out_t)(x[i] * slope);
        else y[i] = (out_t)x[i];
    }
}

// Table index floor(x * 2^lut_bits) + lut_offset, clamped; the table holds out_t codes.
template <class in_t, class out_t, typename CONFIG_T>
void lookup(const in_t x[CONFIG_T::n], out_t y[CONFIG_T::n], const typename CONFIG_T::table_t table[CONFIG_T::table_size]) {
#pragma HLS PIPELINE
    const int shift = (in_t::width - in_t::iwidth) - CONFIG_T::lut_bits;
    for (unsigned i = 0; i < CONFIG_T::n; i++) {
        long long idx = shift_floor(to_code(x[i]), shift) + CONFIG_T::lut_offset;
        if (idx < 0) idx = 0;
        if (idx > (long long)CONFIG_T::table_size - 1) idx = CONFIG_T::table_size - 1;
        y[i] = from_code<out_t>(table[idx]);
    }
}

template <class in_t, class out_t, typename CONFIG_T>
void softmax(const in_t x[CONFIG_T::n], out_t y[CONFIG_T::n], const typename CONFIG_T::table_t table[CONFIG_T::table_size]) {
    const int shift = (in_t::width - in_t::iwidth) - CONFIG_T::exp_bits;
    const int frac_out = out_t::width - out_t::iwidth;
    long long best = to_code(x[0]);
    for (unsigned i = 1; i < CONFIG_T::n; i++) {
        const long long c = to_code(x[i]);
        if (c > best) best = c;
    }
    long long e[CONFIG_T::n];
    long long total = 0;
    for (unsigned i = 0; i < CONFIG_T::n; i++) {
        long long idx = shift_floor(best - to_code(x[i]), shift);
        if (idx > (long long)CONFIG_T::table_size - 1) idx = CONFIG_T::table_size - 1;
        e[i] = table[idx];
        total += e[i];
    }
    for (unsigned i = 0; i < CONFIG_T::n; i++) {
        y[i] = from_code<out_t>(sat_code<out_t>(div_round(e[i] * (1LL << frac_out), total)));
    }
}

template <class in1_t, class in2_t, class out_t, typename CONFIG_T>
void add(const in1_t a[CONFIG_T::n], const in2_t b[CONFIG_T::n], out_t y[CONFIG_T::n]) {
#pragma HLS PIPELINE
    for (unsigned i = 0; i < CONFIG_T::n; i++) {
        typename CONFIG_T::accum_t s = a[i];
        s += b[i];
        y[i] = (out_t)s;
    }
}

} // namespace nnet

#endif

// Integer-only kernels for int8 (QDQ) graphs: integer tensors are ap_fixed<9,9> (u8) or
// ap_fixed<8,8> (s8), so their codes are their values. Scales are integer multipliers m with
// one right shift s: round_half_up(v * m * 2^-s), computed in long long.
#ifndef NNET_INT8_H_
#define NNET_INT8_H_

#include "nnet_common.h"

namespace nnet {

inline long long mul_shift(long long v, long long m, int s) {
#pragma HLS INLINE
    const long long p = v * m;
    return s > 0 ? ((p + (1LL << (s - 1))) >> s) : p * (1LL << (-s));
}

inline long long clamp_ll(long long v, long long lo, long long hi) {
#pragma HLS INLINE
    return v < lo ? lo : (v > hi ? hi : v);
}

// fixed point -> integer codes: clamp(x * 2^-frac / scale + zp)
template <class in_t, class out_t, typename CONFIG_T>
void quantize(const in_t x[CONFIG_T::n], out_t y[CONFIG_T::n]) {
#pragma HLS PIPELINE
    for (unsigned i = 0; i < CONFIG_T::n; i++)
        y[i] = from_code<out_t>(clamp_ll(mul_shift(to_code(x[i]), CONFIG_T::m, CONFIG_T::s) + CONFIG_T::zp, CONFIG_T::lo, CONFIG_T::hi));
}

// integer codes -> fixed point: (q - zp) * scale, rounded half up and saturated
template <class in_t, class out_t, typename CONFIG_T>
void dequantize(const in_t x[CONFIG_T::n], out_t y[CONFIG_T::n]) {
#pragma HLS PIPELINE
    for (unsigned i = 0; i < CONFIG_T::n; i++)
        y[i] = from_code<out_t>(sat_code<out_t>(mul_shift(to_code(x[i]) - CONFIG_T::zp, CONFIG_T::m, CONFIG_T::s)));
}

// int8 linear: int accumulate of q_x * q_w plus the folded bias, then per-channel requantization
template <class in_t, class out_t, typename CONFIG_T>
void dense_int8(const in_t x[CONFIG_T::n_in], out_t y[CONFIG_T::n_out],
                const typename CONFIG_T::wcode_t w[CONFIG_T::n_in * CONFIG_T::n_out],
                const typename CONFIG_T::bcode_t b[CONFIG_T::n_out],
                const long long m[CONFIG_T::n_out]) {
#pragma HLS PIPELINE II = CONFIG_T::reuse_factor
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = CONFIG_T::block_factor
    for (unsigned o = 0; o < CONFIG_T::n_out; o++) {
        long long acc = b[o];
        for (unsigned i = 0; i < CONFIG_T::n_in; i++) acc += to_code(x[i]) * (long long)w[o * CONFIG_T::n_in + i];
        y[o] = from_code<out_t>(clamp_ll(mul_shift(acc, m[o], CONFIG_T::s) + CONFIG_T::zp, CONFIG_T::lo, CONFIG_T::hi));
    }
}

} // namespace nnet

#endif

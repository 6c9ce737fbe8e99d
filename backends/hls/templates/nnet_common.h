// Shared helpers of the generated HLS kernels: raw-bit conversions between integer codes and
// ap_fixed values (weights are stored as integer code arrays: ap_fixed initializer lists
// compile far too slowly), and rounding division used by average pooling and softmax.
#ifndef NNET_COMMON_H_
#define NNET_COMMON_H_

#include "ap_fixed.h"
#include "ap_int.h"

namespace nnet {

// The ap_fixed value whose two's complement bits are `code`.
template <class T> inline T from_code(long long code) {
#pragma HLS INLINE
    T t;
    t.range(T::width - 1, 0) = code;
    return t;
}

// The signed integer code of an ap_fixed value.
template <class T> inline long long to_code(const T &t) {
#pragma HLS INLINE
    ap_int<T::width> raw = t.range(T::width - 1, 0);
    return raw.to_int64();
}

// Arithmetic shift: right by `s` bits (floor) when s >= 0, left otherwise.
inline long long shift_floor(long long v, int s) {
#pragma HLS INLINE
    return s >= 0 ? (v >> s) : (v * (1LL << (-s)));
}

// floor(num / den + 1/2) for den > 0: round half up, like AP_RND.
inline long long div_round(long long num, long long den) {
#pragma HLS INLINE
    long long n2 = 2 * num + den, d2 = 2 * den;
    long long q = n2 / d2;
    return (n2 % d2 != 0 && n2 < 0) ? q - 1 : q;
}

template <class T> inline long long sat_code(long long v) {
#pragma HLS INLINE
    const long long hi = (1LL << (T::width - 1)) - 1, lo = -(1LL << (T::width - 1));
    return v > hi ? hi : (v < lo ? lo : v);
}

} // namespace nnet

#endif

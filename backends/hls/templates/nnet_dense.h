// Fully connected layer: y = (out_t)(b + sum_i x[i] * w[o][i]) with an exact accumulator.
// Reuse factor RF: each multiplier is used RF times (II = RF); above the full-unroll limit the
// generator picks the resource strategy (weights in BRAM, partitioned cyclically by n/RF).
#ifndef NNET_DENSE_H_
#define NNET_DENSE_H_

#include "nnet_common.h"

namespace nnet {

template <class in_t, class out_t, typename CONFIG_T>
void dense(const in_t x[CONFIG_T::n_in], out_t y[CONFIG_T::n_out],
           const typename CONFIG_T::wcode_t w[CONFIG_T::n_in * CONFIG_T::n_out],
           const typename CONFIG_T::bcode_t b[CONFIG_T::n_out]) {
#pragma HLS PIPELINE II = CONFIG_T::reuse_factor
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = CONFIG_T::block_factor
#pragma HLS ARRAY_PARTITION variable = x complete
#pragma HLS ARRAY_PARTITION variable = y complete
Outputs:
    for (unsigned o = 0; o < CONFIG_T::n_out; o++) {
        typename CONFIG_T::accum_t acc = 0;
        if (CONFIG_T::has_bias) acc = from_code<typename CONFIG_T::bias_t>(b[o]);
    Products:
        for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
            acc += x[i] * from_code<typename CONFIG_T::weight_t>(w[o * CONFIG_T::n_in + i]);
        }
        y[o] = (out_t)acc;
    }
}

// Per-channel scale and shift (a standalone batch norm), channels-last.
template <class in_t, class out_t, typename CONFIG_T>
void scale_shift(const in_t x[CONFIG_T::n], out_t y[CONFIG_T::n],
                 const typename CONFIG_T::wcode_t w[CONFIG_T::channels],
                 const typename CONFIG_T::bcode_t b[CONFIG_T::channels]) {
#pragma HLS PIPELINE II = CONFIG_T::reuse_factor
    for (unsigned i = 0; i < CONFIG_T::n; i++) {
        const unsigned c = i % CONFIG_T::channels;
        typename CONFIG_T::accum_t acc = 0;
        if (CONFIG_T::has_bias) acc = from_code<typename CONFIG_T::bias_t>(b[c]);
        acc += x[i] * from_code<typename CONFIG_T::weight_t>(w[c]);
        y[i] = (out_t)acc;
    }
}

} // namespace nnet

#endif

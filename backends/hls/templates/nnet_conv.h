// 2-d convolution (a 1-d convolution has height 1), channels-last, direct form: for each output
// pixel the window is gathered from the input array (zero outside it) and reduced with an exact
// accumulator. Weights are [c_out][kh][kw][c_in / groups] integer codes.
#ifndef NNET_CONV_H_
#define NNET_CONV_H_

#include "nnet_common.h"

namespace nnet {

template <class in_t, class out_t, typename CONFIG_T>
void conv2d(const in_t x[CONFIG_T::ih * CONFIG_T::iw * CONFIG_T::c_in],
            out_t y[CONFIG_T::oh * CONFIG_T::ow * CONFIG_T::c_out],
            const typename CONFIG_T::wcode_t w[CONFIG_T::c_out * CONFIG_T::kh * CONFIG_T::kw * (CONFIG_T::c_in / CONFIG_T::groups)],
            const typename CONFIG_T::bcode_t b[CONFIG_T::c_out]) {
    const unsigned cg = CONFIG_T::c_in / CONFIG_T::groups, og = CONFIG_T::c_out / CONFIG_T::groups;
Rows:
    for (unsigned oh = 0; oh < CONFIG_T::oh; oh++) {
    Cols:
        for (unsigned ow = 0; ow < CONFIG_T::ow; ow++) {
#pragma HLS PIPELINE II = CONFIG_T::reuse_factor
        Filters:
            for (unsigned oc = 0; oc < CONFIG_T::c_out; oc++) {
                typename CONFIG_T::accum_t acc = 0;
                if (CONFIG_T::has_bias) acc = from_code<typename CONFIG_T::bias_t>(b[oc]);
                const unsigned g = oc / og;
            Taps:
                for (unsigned kh = 0; kh < CONFIG_T::kh; kh++) {
                    const int ih = (int)(oh * CONFIG_T::sh + kh * CONFIG_T::dh) - CONFIG_T::pt;
                    if (ih < 0 || ih >= (int)CONFIG_T::ih) continue;
                    for (unsigned kw = 0; kw < CONFIG_T::kw; kw++) {
                        const int iw = (int)(ow * CONFIG_T::sw + kw * CONFIG_T::dw) - CONFIG_T::pl;
                        if (iw < 0 || iw >= (int)CONFIG_T::iw) continue;
                        for (unsigned c = 0; c < cg; c++) {
                            const in_t v = x[(ih * CONFIG_T::iw + iw) * CONFIG_T::c_in + g * cg + c];
                            const long long k = ((oc * CONFIG_T::kh + kh) * CONFIG_T::kw + kw) * cg + c;
                            acc += v * from_code<typename CONFIG_T::weight_t>(w[k]);
                        }
                    }
                }
                y[(oh * CONFIG_T::ow + ow) * CONFIG_T::c_out + oc] = (out_t)acc;
            }
        }
    }
}

} // namespace nnet

#endif

// Max and average pooling, channels-last. Padding never wins a max; the average divides the
// exact integer sum by the window count and rounds half up (integer division, as the emulator).
#ifndef NNET_POOL_H_
#define NNET_POOL_H_

#include "nnet_common.h"

namespace nnet {

template <class in_t, class out_t, typename CONFIG_T>
void pool2d(const in_t x[CONFIG_T::ih * CONFIG_T::iw * CONFIG_T::c],
            out_t y[CONFIG_T::oh * CONFIG_T::ow * CONFIG_T::c]) {
    const int frac_in = in_t::width - in_t::iwidth, frac_out = out_t::width - out_t::iwidth;
Rows:
    for (unsigned oh = 0; oh < CONFIG_T::oh; oh++) {
    Cols:
        for (unsigned ow = 0; ow < CONFIG_T::ow; ow++) {
#pragma HLS PIPELINE
            for (unsigned c = 0; c < CONFIG_T::c; c++) {
                in_t best = 0;
                bool seen = false;
                long long total = 0, count = 0;
                for (unsigned kh = 0; kh < CONFIG_T::kh; kh++) {
                    const int ih = (int)(oh * CONFIG_T::sh + kh * CONFIG_T::dh) - CONFIG_T::pt;
                    for (unsigned kw = 0; kw < CONFIG_T::kw; kw++) {
                        const int iw = (int)(ow * CONFIG_T::sw + kw * CONFIG_T::dw) - CONFIG_T::pl;
                        const bool inside = ih >= 0 && ih < (int)CONFIG_T::ih && iw >= 0 && iw < (int)CONFIG_T::iw;
                        const bool in_pad = ih < (int)(CONFIG_T::ih + CONFIG_T::pb) && iw < (int)(CONFIG_T::iw + CONFIG_T::pr);
                        if (CONFIG_T::include_pad ? in_pad : inside) count++;
                        if (!inside) continue;
                        const in_t v = x[(ih * CONFIG_T::iw + iw) * CONFIG_T::c + c];
                        if (!seen || v > best) best = v;
                        seen = true;
                        total += to_code(v);
                    }
                }
                out_t r;
                if (CONFIG_T::is_max) {
                    r = (out_t)best;
                } else {
                    const int d = frac_out - frac_in;
                    const long long num = d >= 0 ? total * (1LL << d) : total;
                    const long long den = d >= 0 ? count : count * (1LL << (-d));
                    r = from_code<out_t>(sat_code<out_t>(div_round(num, den)));
                }
                y[(oh * CONFIG_T::ow + ow) * CONFIG_T::c + c] = r;
            }
        }
    }
}

} // namespace nnet

#endif

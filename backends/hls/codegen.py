"""C++ generation: ``Layer`` records -> the files of a Vitis HLS project (hls4ml-like layout).

firmware/<proj>.cpp/.h      the top function (the only synthesized file), one kernel call per layer
firmware/defines.h          sizes and the fixed-point typedefs of every layer output
firmware/parameters.h       one config struct per layer (sizes, reuse factor, accumulator types)
firmware/weights/*.h        weights, biases and tables as integer-code arrays
firmware/nnet_utils/*.h     the kernel templates (package data: backends/hls/templates/)
tb/<proj>_test.cpp, tb_data the C-simulation testbench and its expected outputs (from the emulator)
bridge/<proj>_bridge.cpp    ``extern "C" hls_predict`` for ctypes: batch loop, float in/out
build_prj.tcl               csim / csynth / cosim / export with Vitis HLS
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.hls.fixed import FixedType
from backends.hls.layers import (
    EXP_FRAC,
    EXP_STEP_BITS,
    LUT_RANGES,
    LUT_SIZE,
    SLOPE_TYPE,
    Layer,
    Tensor,
)

TEMPLATES = Path(__file__).parent / "templates"
KERNEL_HEADERS = ("nnet_common.h", "nnet_dense.h", "nnet_conv.h", "nnet_pool.h", "nnet_activation.h", "nnet_int8.h")
UNROLL_LIMIT = 4096  # partitioned elements beyond which full unrolling fails (notes): resource strategy


def generate(proj: str, inputs: list[Tensor], layers: list[Layer], outputs: list[Tensor],
             options: dict, tb: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, str]:
    files = {f"firmware/nnet_utils/{h}": (TEMPLATES / h).read_text() for h in KERNEL_HEADERS}
    files["firmware/defines.h"] = defines(inputs, layers, outputs)
    files["firmware/parameters.h"] = parameters(layers)
    for layer in layers:
        files.update(weight_files(layer))
    files[f"firmware/{proj}.h"] = top_header(proj, inputs, outputs)
    files[f"firmware/{proj}.cpp"] = top_source(proj, inputs, layers, outputs)
    files[f"bridge/{proj}_bridge.cpp"] = bridge(proj, inputs, outputs)
    files[f"tb/{proj}_test.cpp"] = testbench(proj, inputs, outputs)
    files["build_prj.tcl"] = tcl(proj, options)
    if tb is not None:
        files["tb_data/tb_input_features.dat"] = dat(tb[0])
        files["tb_data/tb_output_predictions.dat"] = dat(tb[1])
    return files


def dat(rows: np.ndarray) -> str:
    return "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows)


def guard(name: str, body: str, includes: str = "") -> str:
    return f"#ifndef {name}\n#define {name}\n\n{includes}{body}\n#endif\n"


# -- defines.h / parameters.h ------------------------------------------------------------------
def defines(inputs: list[Tensor], layers: list[Layer], outputs: list[Tensor]) -> str:
    lines = []
    for i, t in enumerate(inputs, 1):
        lines += [f"#define N_INPUT_{i} {t.size}", f"typedef {t.type.cpp()} input{i}_t;"]
    for layer in layers:
        t = layer.output
        lines += [f"#define N_LAYER_{layer.index} {t.size}  // {layer.kind} {layer.name}",
                  f"typedef {t.type.cpp()} layer{layer.index}_t;"]
    for i, t in enumerate(outputs, 1):
        lines += [f"#define N_OUTPUT_{i} {t.size}", f"typedef {t.type.cpp()} result{i}_t;"]
    return guard("DEFINES_H_", "\n".join(lines) + "\n", '#include "ap_fixed.h"\n#include "ap_int.h"\n\n')


def config(layer: Layer) -> str:
    """The ``config<i>`` struct of one layer."""
    p, i = layer.p, layer.index
    c: list[str] = [f"static const unsigned n = {layer.output.size};"]
    if "accum_t" in p:
        c.append(f"typedef {p['accum_t'].cpp(False)} accum_t;")
    if "weight_t" in p:
        c += [f"typedef {p['weight_t'].cpp(False)} weight_t;", f"typedef {p['bias_t'].cpp(False)} bias_t;",
              f"typedef {p['weight_t'].code_ctype()} wcode_t;", f"typedef {p['bias_t'].code_ctype()} bcode_t;",
              f"static const bool has_bias = {'true' if p['b'] is not None else 'false'};",
              f"static const unsigned reuse_factor = {p['reuse']['reuse_factor']};",
              f"static const unsigned block_factor = {p['reuse']['block_factor']};",
              f"// strategy: {p['reuse']['strategy']}"]
    if layer.kind in ("quantize", "dequantize", "qdense"):
        if layer.kind != "qdense":
            c.append(f"static const long long m = {int(p['m'][0])};")
        c += [f"static const int s = {p['s']};", f"static const long long zp = {p['zp']};"]
        if layer.kind != "dequantize":
            c += [f"static const long long lo = {p['lo']};", f"static const long long hi = {p['hi']};"]
    if layer.kind in ("dense", "qdense"):
        c += [f"static const unsigned n_in = {p['n_in']};", f"static const unsigned n_out = {p['n_out']};"]
    if layer.kind == "scale":
        c.append(f"static const unsigned channels = {p['channels']};")
    if layer.kind in ("conv", "pool"):
        keys = ["ih", "iw", "kh", "kw", "sh", "sw", "pt", "pl", "pb", "pr", "dh", "dw", "oh", "ow"]
        keys += ["c_in", "c_out", "groups"] if layer.kind == "conv" else ["c"]
        c += [f"static const int {k} = {p[k]};" for k in keys]
    if layer.kind == "pool":
        c += [f"static const bool is_max = {'true' if p['mode'] == 'max' else 'false'};",
              f"static const bool include_pad = {'true' if p['include_pad'] else 'false'};"]
    if layer.kind == "softmax":
        c += ["typedef int table_t;", f"static const unsigned table_size = {LUT_SIZE};",
              f"static const int exp_bits = {EXP_STEP_BITS};  // table codes have {EXP_FRAC} fraction bits"]
    c += act_config(p.get("act"), layer.output.type)
    body = "\n".join("    " + s for s in c)
    return f"struct config{i} {{  // {layer.kind} {layer.name}\n{body}\n}};\n"


def act_config(act: dict | None, out: FixedType) -> list[str]:
    if not act or act["kind"] == "none":
        return []
    if act["kind"] == "clamp":
        lo, hi = act["lo"], act["hi"]
        return [f"static const bool has_lo = {'false' if lo is None else 'true'};",
                f"static const long long lo = {0 if lo is None else lo};",
                f"static const bool has_hi = {'false' if hi is None else 'true'};",
                f"static const long long hi = {0 if hi is None else hi};"]
    if act["kind"] == "leaky":
        return [f"typedef {SLOPE_TYPE.cpp(False)} slope_t;", f"static const long long slope = {act['slope']};"]
    lo, bits = LUT_RANGES[act["fn"]]
    return [f"typedef {out.code_ctype()} table_t;", f"static const unsigned table_size = {LUT_SIZE};",
            f"static const int lut_bits = {bits};", f"static const int lut_offset = {-int(lo * 2 ** bits)};"]


def parameters(layers: list[Layer]) -> str:
    includes = "".join(f'#include "nnet_utils/{h}"\n' for h in KERNEL_HEADERS)
    includes += '#include "defines.h"\n'
    includes += "".join(f"#include \"weights/{Path(n).name}\"\n" for layer in layers for n in sorted(weight_files(layer)))
    body = "\n".join(config(layer) for layer in layers)
    return guard("PARAMETERS_H_", body, includes + "\n")


def weight_files(layer: Layer) -> dict[str, str]:
    p, i = layer.p, layer.index
    arrays = {}
    if "w" in p:
        arrays[f"w{i}"] = (p["weight_t"].code_ctype(), p["w"])
        if p["b"] is not None:
            arrays[f"b{i}"] = (p["bias_t"].code_ctype(), p["b"])
    if layer.kind == "qdense":
        arrays[f"m{i}"] = ("long long", p["m"])
    act = p.get("act") or {}
    if act.get("kind") == "lut":
        arrays[f"t{i}"] = (layer.output.type.code_ctype(), act["table"])
    if "table" in p:
        arrays[f"t{i}"] = ("int", p["table"])
    return {f"firmware/weights/{name}.h": code_array(name, ctype, codes) for name, (ctype, codes) in arrays.items()}


def code_array(name: str, ctype: str, codes: np.ndarray) -> str:
    flat = np.asarray(codes, dtype=np.int64).ravel()
    rows = [",".join(str(int(v)) for v in flat[k:k + 32]) for k in range(0, flat.size, 32)]
    body = f"// integer codes (raw bits), converted in the kernel\nstatic const {ctype} {name}[{flat.size}] = {{\n"
    body += ",\n".join(rows) + "\n};\n"
    return guard(f"{name.upper()}_H_", body)


# -- top function ------------------------------------------------------------------------------
def signature(proj: str, inputs: list[Tensor], outputs: list[Tensor]) -> str:
    args = [f"const input{i}_t input{i}[N_INPUT_{i}]" for i in range(1, len(inputs) + 1)]
    args += [f"result{i}_t result{i}[N_OUTPUT_{i}]" for i in range(1, len(outputs) + 1)]
    return f"void {proj}({', '.join(args)})"


def top_header(proj: str, inputs: list[Tensor], outputs: list[Tensor]) -> str:
    return guard(f"{proj.upper()}_H_", signature(proj, inputs, outputs) + ";\n", '#include "defines.h"\n\n')


def call(layer: Layer) -> list[str]:
    i, p = layer.index, layer.p
    ins = [t.name for t in layer.inputs]
    in_t = [type_name(t) for t in layer.inputs]
    out, out_t, cfg = layer.output.name, f"layer{i}_t", f"config{i}"
    wb = f"w{i}, {'b' + str(i) if p.get('b') is not None else 'w' + str(i)}"
    act = (p.get("act") or {}).get("kind", "none")
    if layer.kind == "dense":
        lines = [f"nnet::dense<{in_t[0]}, {out_t}, {cfg}>({ins[0]}, {out}, {wb});"]
    elif layer.kind == "qdense":
        lines = [f"nnet::dense_int8<{in_t[0]}, {out_t}, {cfg}>({ins[0]}, {out}, w{i}, b{i}, m{i});"]
    elif layer.kind in ("quantize", "dequantize"):
        lines = [f"nnet::{layer.kind}<{in_t[0]}, {out_t}, {cfg}>({ins[0]}, {out});"]
    elif layer.kind == "conv":
        lines = [f"nnet::conv2d<{in_t[0]}, {out_t}, {cfg}>({ins[0]}, {out}, {wb});"]
    elif layer.kind == "scale":
        lines = [f"nnet::scale_shift<{in_t[0]}, {out_t}, {cfg}>({ins[0]}, {out}, {wb});"]
    elif layer.kind == "pool":
        lines = [f"nnet::pool2d<{in_t[0]}, {out_t}, {cfg}>({ins[0]}, {out});"]
    elif layer.kind == "add":
        lines = [f"nnet::add<{in_t[0]}, {in_t[1]}, {out_t}, {cfg}>({ins[0]}, {ins[1]}, {out});"]
    elif layer.kind == "softmax":
        lines = [f"nnet::softmax<{in_t[0]}, {out_t}, {cfg}>({ins[0]}, {out}, t{i});"]
    else:  # standalone activation: the activation reads the input type directly
        if act == "lut":
            return [f"nnet::lookup<{in_t[0]}, {out_t}, {cfg}>({ins[0]}, {out}, t{i});"]
        if act == "leaky":
            return [f"nnet::leaky_relu<{in_t[0]}, {out_t}, {cfg}>({ins[0]}, {out});"]
        lines = [f"nnet::cast<{in_t[0]}, {out_t}, {cfg}>({ins[0]}, {out});"]
    # fused activation (or a standalone clamp): on the rounded result, in place
    if act == "clamp":
        lines.append(f"nnet::clamp<{out_t}, {cfg}>({out});")
    elif act == "leaky":
        lines.append(f"nnet::leaky_relu<{out_t}, {out_t}, {cfg}>({out}, {out});")
    elif act == "lut":
        lines.append(f"nnet::lookup<{out_t}, {out_t}, {cfg}>({out}, {out}, t{i});")
    return lines


def type_name(t: Tensor) -> str:
    if t.name.startswith("input"):
        return f"{t.name}_t"
    return t.name.replace("_out", "_t")


def top_source(proj: str, inputs: list[Tensor], layers: list[Layer], outputs: list[Tensor]) -> str:
    conv = any(layer.kind in ("conv", "pool") for layer in layers)
    ports = [f"input{i}" for i in range(1, len(inputs) + 1)] + [f"result{i}" for i in range(1, len(outputs) + 1)]
    body = [f'#include "{proj}.h"', '#include "parameters.h"', "", signature(proj, inputs, outputs) + " {"]
    body += [f"#pragma HLS ARRAY_PARTITION variable = {p} complete" for p in ports]
    body += ["#pragma HLS INTERFACE ap_vld port = " + p for p in ports]
    body.append("#pragma HLS DATAFLOW" if conv else "#pragma HLS PIPELINE")
    for layer in layers:
        body.append(f"    layer{layer.index}_t {layer.output.name}[N_LAYER_{layer.index}];  // {layer.name}")
        body += ["    " + s for s in call(layer)]
    for i, t in enumerate(outputs, 1):
        body.append(f"    for (unsigned i = 0; i < N_OUTPUT_{i}; i++) result{i}[i] = (result{i}_t){t.name}[i];")
    body.append("}\n")
    return "\n".join(body)


# -- bridge / testbench / tcl ------------------------------------------------------------------
def bridge(proj: str, inputs: list[Tensor], outputs: list[Tensor]) -> str:
    """ctypes entry point (never synthesized): float in/out in stored (channels-last) order."""
    n_in, n_out = len(inputs), len(outputs)
    # One translation unit (the firmware source is included): g++ parses ap_fixed.h once.
    lines = ['#include "../firmware/' + proj + '.cpp"', "", 'extern "C" int hls_abi_version() { return 1; }', "",
             'extern "C" int hls_predict(const float *const *inputs, float *const *outputs, long long batch) {',
             "    for (long long n = 0; n < batch; n++) {"]
    for i in range(1, n_in + 1):
        lines += [f"        input{i}_t in{i}[N_INPUT_{i}];",
                  f"        for (unsigned k = 0; k < N_INPUT_{i}; k++) in{i}[k] = (input{i}_t)(double)inputs[{i - 1}][n * N_INPUT_{i} + k];"]
    lines += [f"        result{i}_t out{i}[N_OUTPUT_{i}];" for i in range(1, n_out + 1)]
    args = ", ".join([f"in{i}" for i in range(1, n_in + 1)] + [f"out{i}" for i in range(1, n_out + 1)])
    lines.append(f"        {proj}({args});")
    for i in range(1, n_out + 1):
        lines.append(f"        for (unsigned k = 0; k < N_OUTPUT_{i}; k++) outputs[{i - 1}][n * N_OUTPUT_{i} + k] = (float)out{i}[k].to_double();")
    lines += ["    }", "    return 0;", "}", ""]
    return "\n".join(lines)


def testbench(proj: str, inputs: list[Tensor], outputs: list[Tensor]) -> str:
    """Reads tb_data (stored order, one sample a line, all inputs then all outputs) and counts
    mismatches against the emulator's outputs; exit status 0 when all match exactly."""
    n_in, n_out = len(inputs), len(outputs)
    lines = ["#include <cstdio>", f'#include "../firmware/{proj}.h"', "", "int main() {",
             '    FILE *fi = fopen("tb_data/tb_input_features.dat", "r");',
             '    FILE *fo = fopen("tb_data/tb_output_predictions.dat", "r");',
             '    if (!fi || !fo) { printf("tb_data missing\\n"); return 2; }',
             "    long long samples = 0, mismatches = 0;", "    for (;;) {", "        double v;", "        bool ok = true;"]
    for i in range(1, n_in + 1):
        lines += [f"        static input{i}_t in{i}[N_INPUT_{i}];",
                  f"        for (unsigned k = 0; k < N_INPUT_{i}; k++) {{ if (fscanf(fi, \"%lf\", &v) != 1) ok = false; in{i}[k] = (input{i}_t)v; }}"]
    lines.append("        if (!ok) break;")
    lines += [f"        static result{i}_t out{i}[N_OUTPUT_{i}];" for i in range(1, n_out + 1)]
    args = ", ".join([f"in{i}" for i in range(1, n_in + 1)] + [f"out{i}" for i in range(1, n_out + 1)])
    lines.append(f"        {proj}({args});")
    for i in range(1, n_out + 1):
        lines.append(f"        for (unsigned k = 0; k < N_OUTPUT_{i}; k++) {{ if (fscanf(fo, \"%lf\", &v) != 1) return 2; "
                     f"if ((double)(float)out{i}[k].to_double() != v) mismatches++; }}")
    lines += ["        samples++;", "    }",
              '    printf("%lld samples, %lld mismatching outputs\\n", samples, mismatches);',
              '    printf(mismatches == 0 ? "PASS\\n" : "FAIL\\n");', "    return mismatches == 0 ? 0 : 1;", "}", ""]
    return "\n".join(lines)


def tcl(proj: str, options: dict) -> str:
    part = options.get("hls_part") or "xcvu13p-flga2577-2-e"
    clock = float(options.get("hls_clock_ns") or 5.0)
    return f"""# Vitis HLS: vitis_hls -f build_prj.tcl  (set csim/synth/cosim/export below)
array set opt {{ csim 1 synth 1 cosim 0 export 0 }}
open_project -reset {proj}_prj
set_top {proj}
add_files firmware/{proj}.cpp -cflags "-std=c++14 -Ifirmware"
add_files -tb tb/{proj}_test.cpp -cflags "-std=c++14 -Ifirmware"
add_files -tb tb_data
open_solution -reset "solution1"
set_part {{{part}}}
create_clock -period {clock} -name default
if {{$opt(csim)}} {{ csim_design }}
if {{$opt(synth)}} {{ csynth_design }}
if {{$opt(cosim)}} {{ cosim_design }}
if {{$opt(export)}} {{ export_design -format ip_catalog }}
exit
"""

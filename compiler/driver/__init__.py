"""The driver: what users call. It sits on top of everything else.

    compiler/           the core: IR, ops, interpreter, frontend (torch.export -> IR), text
    passes/             graph rewrites; import only the core
    backends/           emitters and runners per target; import only the core
    compiler/driver/    compile() and load(), the command-line tools, compression orchestration,
                        the artifact format, the runtime: imports all of the above

Nothing below the driver imports it (``tests/test_layering.py`` checks this).
"""

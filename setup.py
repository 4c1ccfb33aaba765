"""The optional C kernels (wsncli/engine/nn/_kernels.c). Everything else is in pyproject.toml.

`optional=True`: where no C compiler is found the build skips the extension and wsn runs the same
steps with torch operations (same results, slower on the CPU)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wsncli.engine.nn._kernels",
            ["wsncli/engine/nn/_kernels.c"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)

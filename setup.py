"""Build script for adamfast's compiled kernels.

Project metadata lives in pyproject.toml; this file only describes the
extension modules, because their compile flags depend on the compiler found
at build time (OpenMP is probed, not assumed).

Environment switches (all optional):

  ADAMFAST_NATIVE=1    add -march=native.  Only for local builds: the result
                       may crash with SIGILL on another x86-64 (e.g. one
                       without AVX2/AVX-512), so wheels must never use it.
  ADAMFAST_OPENMP=0    build without OpenMP even if the compiler supports it.
  ADAMFAST_AVX2=0      skip the adamfast._cython_avx2 variant.
  ADAMFAST_AVX512=0    skip the adamfast._cython_avx512 variant.

Up to three extension modules are built from the one kernel source,
kernels/_family.pxi: adamfast._cython for the baseline ISA (runs on any CPU of
the architecture) and, on x86-64 with gcc/clang, adamfast._cython_avx2 with
-mavx2 added and adamfast._cython_avx512 with -mavx512f added.
adamfast._dispatch picks one at run time from the CPU's features.  Each links
its own copy of adamfast's thread pool, the C in kernels/af_pool.c.
  ADAMFAST_ANNOTATE=1  write Cython's annotated HTML next to the .pyx.
"""

import copy
import os
import shutil
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Set once for every kernel, as scikit-learn does, instead of per-function
# decorators: the Python layer validates shapes, dtypes and contiguity, so
# the kernels need none of Cython's per-access safety checks.
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
}

# gcc/clang flags.  Portable on purpose: x86-64 baseline (SSE2) so a wheel
# built here runs on any x86-64; the ISA variants add only their -m flags.
#   -ffp-contract=off  GNU C defaults to fusing a*b+c into FMA where the
#                      target has it; NumPy never does, and bit-identical
#                      results to adamfast._numpy_backend need the same roundings.
#   -fno-math-errno    lets gcc vectorise sqrt/sqrtf (sqrtps/sqrtpd).  It only
#                      drops the errno write for negative inputs; every value
#                      is unchanged, unlike -ffast-math, which is not used.
UNIX_COMPILE_ARGS = ["-O3", "-ffp-contract=off", "-fno-math-errno"]
UNIX_OPENMP_ARGS = ["-fopenmp"]
UNSWITCH_ARGS = ["--param=max-unswitch-insns=500"]
# A loop over params, grads and N state buffers vectorizes behind run-time
# checks that no written buffer overlaps another; gcc's default allows 10 such
# checks, which Adan's four state buffers exceed (tests/test_vectorized.py).
ALIAS_CHECK_ARGS = ["--param=vect-max-version-for-alias-checks=64"]
# Keep each (kind, dtype) driver a function of its own even though it is
# called once: tests/test_vectorized.py finds it by name in the machine code.
NOINLINE_ONCE_ARGS = ["-fno-inline-functions-called-once"]
# The AVX2 build's line loop (kernels/_driver.pxi says why): _elem_line writes
# one cache line's elements out (16 calls of the element function for
# float32), which gcc inlines and vectorizes only above its default inlining
# and unswitching limits.  Given only to the AVX2 module, and only when the
# compiler takes them; the module then defines ADAMFAST_LINE_LOOP, without
# which it keeps the plain loop (tests/test_vectorized.py checks the result).
LINE_LOOP_ARGS = ["--param=max-unswitch-insns=4000", "--param=max-inline-insns-single=4000",
                  "--param=large-function-growth=4000", "--param=inline-unit-growth=400",
                  "--param=large-function-insns=20000"]
# MSVC does not contract floating-point expressions under /fp:precise.
MSVC_COMPILE_ARGS = ["/O2", "/fp:precise"]
MSVC_OPENMP_ARGS = ["/openmp"]

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return (n > 0 && omp_get_max_threads() > 0) ? 0 : 1;
}
"""


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# Each compiles only for an x86-64 target whose compiler takes the variant's
# flags; they fail for arm64, 32-bit x86 and cross or multi-arch (macOS
# universal2) builds.
AVX2_PROBE = r"""
#if !defined(__x86_64__) || !defined(__AVX2__)
#error "not an x86-64 AVX2 target"
#endif
#include <immintrin.h>
int main(void) {
    __m256i a = _mm256_set1_epi32(1);
    a = _mm256_add_epi32(a, a);
    return _mm256_extract_epi32(a, 0) == 2 ? 0 : 1;
}
"""
AVX512_PROBE = r"""
#if !defined(__x86_64__) || !defined(__AVX512F__)
#error "not an x86-64 AVX-512 target"
#endif
#include <immintrin.h>
int main(void) {
    __m512 a = _mm512_set1_ps(1.0f);
    return _mm512_reduce_add_ps(_mm512_add_ps(a, a)) == 32.0f ? 0 : 1;
}
"""
AVX2_ARGS = ["-mavx2"]
# 512-bit vectors, asked for: a vector then spans a whole cache line of each
# stream, which keeps a NumPy user's arrays (one page offset shared by all)
# near the speed of line-staggered ones (docs/backends.md).
AVX512_ARGS = ["-mavx512f", "-mprefer-vector-width=512"]
AVX2_MODULE = "adamfast._cython_avx2"
AVX512_MODULE = "adamfast._cython_avx512"
# (module, flags, probe, the switch that skips it).  No -mfma in any: and
# -ffp-contract=off stays, so each rounds exactly as the baseline module does.
ISA_VARIANTS = [
    (AVX2_MODULE, AVX2_ARGS, AVX2_PROBE, "ADAMFAST_AVX2"),
    (AVX512_MODULE, AVX512_ARGS, AVX512_PROBE, "ADAMFAST_AVX512"),
]


def _compiler_accepts(compiler, compile_args, link_args, source=OPENMP_PROBE):
    """Compile and link ``source`` with this build's own compiler."""
    tmpdir = tempfile.mkdtemp(prefix="adamfast-probe-")
    cwd = os.getcwd()
    try:
        os.chdir(tmpdir)
        with open("probe.c", "w") as f:
            f.write(source)
        objects = compiler.compile(["probe.c"], extra_postargs=compile_args)
        compiler.link_executable(objects, "probe", extra_postargs=link_args)
        return True
    except Exception:  # CompileError, LinkError, or a missing compiler driver
        return False
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmpdir, ignore_errors=True)


class BuildExt(build_ext):
    """Pick flags for the compiler actually used, then build."""

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        compile_args = list(MSVC_COMPILE_ARGS if msvc else UNIX_COMPILE_ARGS)
        link_args = []
        macros = []

        if not msvc:
            macros.append(("ADAMFAST_FP_CONTRACT_OFF", "1"))
        if _env_flag("ADAMFAST_NATIVE") and not msvc:
            compile_args.append("-march=native")
            macros.append(("ADAMFAST_NATIVE", "1"))

        omp_compile = MSVC_OPENMP_ARGS if msvc else UNIX_OPENMP_ARGS
        omp_link = [] if msvc else UNIX_OPENMP_ARGS
        if os.environ.get("ADAMFAST_OPENMP", "").strip() == "0":
            use_openmp = False
            reason = "ADAMFAST_OPENMP=0"
        else:
            print("adamfast: probing the compiler for OpenMP "
                  "(errors from this probe are expected if it is missing)")
            use_openmp = _compiler_accepts(self.compiler, omp_compile, omp_link)
            reason = "the compiler did not accept %s" % " ".join(omp_compile)
        if use_openmp:
            compile_args += omp_compile
            link_args += omp_link
        else:
            sys.stderr.write(
                "WARNING: adamfast: building without OpenMP (%s); "
                "the Cython backend will run on one thread\n" % reason
            )
        macros.append(("ADAMFAST_OPENMP", "1" if use_openmp else "0"))

        for module, flags, probe, switch in ISA_VARIANTS:
            if msvc:
                use, reason = False, "MSVC"
            elif os.environ.get(switch, "").strip() == "0":
                use, reason = False, "%s=0" % switch
            else:
                print("adamfast: probing the compiler for an x86-64 target and %s "
                      "(errors from this probe are expected on other targets)" % " ".join(flags))
                use = _compiler_accepts(self.compiler, flags, [], probe)
                reason = ("not an x86-64 target, or the compiler did not accept %s"
                          % " ".join(flags))
            if not use:
                print("adamfast: not building %s (%s); the CPUs it would serve use "
                      "another build" % (module, reason))
                self.extensions = [e for e in self.extensions if e.name != module]

        if not msvc:
            # gcc vectorizes the element loops only after unswitching their
            # loop-invariant branches (the L2 term), and with several kinds
            # inlined its default size limit stopped that for AMSGrad.  The
            # vectorization test (tests/test_vectorized.py) checks the result.
            for extra in (UNSWITCH_ARGS, ALIAS_CHECK_ARGS, NOINLINE_ONCE_ARGS):
                if _compiler_accepts(self.compiler, ["-Werror"] + extra, [],
                                     "int main(void) { return 0; }"):
                    compile_args += extra
            if _compiler_accepts(self.compiler, ["-Werror"] + LINE_LOOP_ARGS, [],
                                 "int main(void) { return 0; }"):
                for ext in self.extensions:
                    if ext.name == AVX2_MODULE:
                        ext.extra_compile_args = list(ext.extra_compile_args) + LINE_LOOP_ARGS
                        ext.define_macros = list(ext.define_macros) + [("ADAMFAST_LINE_LOOP", "1")]
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + list(ext.extra_compile_args)
            ext.extra_link_args = link_args + list(ext.extra_link_args)
            ext.define_macros = macros + list(ext.define_macros)
        super().build_extensions()

    def build_extension(self, ext):
        # Every extension compiles kernels/af_pool.c, each with its own flags,
        # and in the shared build_temp all would write
        # build_temp/kernels/af_pool.o.  Each gets a directory of its own, set
        # on a copy of this command so that a parallel build (-j) shares none.
        cmd = copy.copy(self)
        cmd.build_temp = os.path.join(self.build_temp, ext.name)
        super(BuildExt, cmd).build_extension(ext)


HERE = os.path.dirname(os.path.abspath(__file__))


def _load_registry():
    """adamfast.algorithms, loaded on its own (not through adamfast/__init__,
    which would look for the extension being built)."""
    import importlib.util

    path = os.path.join(HERE, "adamfast", "algorithms", "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "_adamfast_registry", path, submodule_search_locations=[os.path.dirname(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def render_kinds():
    """Render kernels/_kinds.pxi from the registry: the engine's constants and the
    slot names (their one source is adamfast/algorithms), which algorithm files to
    include, the table of kinds and the dispatch of the kinds that reduce per
    tensor (pass 1, kernels/_reduce.pxi).  Adding an algorithm adds its .pxi and
    its registry line; nothing here changes."""
    from Cython import Tempita

    registry = _load_registry()
    spec_module = registry._spec
    kinds, nstate, modules, slots, nsum = [], {}, [], {}, {}
    for spec in registry.ALGORITHMS.values():
        for kind, names in spec.kinds.items():
            module = spec.reference[kind].__module__.rsplit(".", 1)[1]
            if module not in modules:
                modules.append(module)
            if slots.setdefault(module, spec.slots) != spec.slots:
                raise ValueError("the specs of adamfast/algorithms/%s.py declare different "
                                 "slots" % module)
            if kind not in nstate:
                kinds.append(kind)
                nstate[kind] = len(names)
            if kind in spec.reduce:
                nsum[kind] = len(spec.reduce[kind].sums)
    for i, kind in enumerate(registry.ROOFLINE_KINDS):
        kinds.append(kind)
        nstate[kind] = i
    shared = [(name, i) for i, name in enumerate(spec_module.SHARED_SLOTS)]
    shared += [("EMA_D", spec_module.EMA_D), ("EMA_OMD", spec_module.EMA_OMD)]
    with open(os.path.join(HERE, "kernels", "_kinds.pxi.in")) as f:
        template = Tempita.Template(f.read())
    text = template.substitute(
        kinds=kinds, nstate=nstate, modules=modules, chunk=spec_module.CHUNK,
        nslot=spec_module.NSLOT, maxstate=spec_module.MAXSTATE, lanes=spec_module.LANES,
        ahead=spec_module.PREFETCH_AHEAD, block=spec_module.PREFETCH_BLOCK,
        nograds=[kind for kind in kinds if kind in registry.NO_GRADS],
        shared=shared, nprologue=len(spec_module.SHARED_SLOTS),
        slots=[(m, slots[m]) for m in modules],
        rkinds=[kind for kind in kinds if kind in nsum], nsum=nsum,
        rmax=max(nsum.values(), default=1))
    out = os.path.join(HERE, "kernels", "_kinds.pxi")
    old = open(out).read() if os.path.exists(out) else None
    if text != old:  # keep the timestamp, so an unchanged build is not redone
        with open(out, "w") as f:
            f.write(text)
    return ["kernels/%s" % name for name in ("_family.pxi", "_entries.pxi", "_adam_fast.pxi",
                                             "_driver.pxi",
                                             "_reduce.pxi", "_kinds.pxi", "_kinds.pxi.in",
                                             "_roofline.pxi", "_pool.pxi", "af_lanes.h",
                                             "algorithms/_common.pxi")] + \
        ["kernels/algorithms/%s.pxi" % m for m in modules]


KERNEL_SOURCES = render_kinds()  # included by both modules
# adamfast's thread pool, plain C (af_pool.h is its API and says what it
# does), compiled into both modules next to the Cython code; _pool.pxi binds it.
POOL_SOURCES = ["kernels/af_pool.c"]
POOL_HEADERS = ["kernels/af_pool.h"]

# The kernels `cimport numpy` (raw PyArray_DATA pointers instead of typed
# memoryviews, for per-call cost), so they compile against numpy's headers:
# the numpy that pyproject.toml's build requirements install.  Only the
# pre-1.7 deprecated API is switched off.
NUMPY_INCLUDE = [numpy.get_include()]
NUMPY_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]

extensions = [
    # Named by import path; the sources sit in kernels/, which is never
    # installed.  `depends` is what puts the .pyx/.pxi and the pool's header
    # into an sdist (cythonize swaps the .pyx in `sources` for the generated
    # .c and keeps af_pool.c, and there is no MANIFEST.in).
    Extension("adamfast._cython", ["kernels/_cython.pyx"] + POOL_SOURCES,
              depends=["kernels/_cython.pyx"] + KERNEL_SOURCES + POOL_HEADERS,
              include_dirs=NUMPY_INCLUDE + ["kernels"], define_macros=NUMPY_MACROS),
]
# The ISA variants: the same source with the variant's flags added (its .pyx
# only names the variant), each dropped in BuildExt when its probe fails.
for module, flags, _probe, _switch in ISA_VARIANTS:
    pyx = "kernels/%s.pyx" % module.rsplit(".", 1)[1]
    extensions.append(
        Extension(module, [pyx] + POOL_SOURCES,
                  depends=[pyx] + KERNEL_SOURCES + POOL_HEADERS,
                  include_dirs=NUMPY_INCLUDE + ["kernels"], define_macros=NUMPY_MACROS,
                  extra_compile_args=flags))

setup(
    # Listed explicitly so kernels/, tests/ and bench/ never get installed
    # as top-level packages.
    packages=["adamfast", "adamfast.algorithms", "adamfast._numba", "adamfast.bench",
              "adamfast.paper", "adamfast.torch"],
    ext_modules=cythonize(
        extensions,
        compiler_directives=COMPILER_DIRECTIVES,
        annotate=_env_flag("ADAMFAST_ANNOTATE"),
    ),
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)

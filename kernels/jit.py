"""How the kernels are compiled: what LLVM optimises, once, and where the results are cached.

Numba compiles every ``@njit`` function it meets as a library of its own: it optimises it
with everything it calls linked in, emits machine code for it, then links the optimised
code into each caller and optimises and emits it again there. A callee five calls deep
went through LLVM six times, so compile time grew with the depth of the call tree
(bench/results/README.md, "Compile time", has the profile). Two decorators split the
roles instead:

``kernel``
    Compiled code only ever called from other compiled code. Numba types and lowers it
    once per signature, and its library only holds that unoptimised IR: LLVM sees it for
    the first time inside the entry point that calls it, where it is optimised along
    with the rest of the entry, as a C compiler optimises a translation unit. It has no
    Python wrapper; calling it from Python raises TypeError (``entry_for`` makes a
    callable copy). Literal arguments are typed as their plain types, so a constant
    ``0`` and a variable do not compile the same kernel twice.
``entry``
    What Python calls: optimised and compiled to machine code, cached on disk with
    everything it calls (``cache_dir``).

Kernels are cached too, as the typed, unoptimised IR of their whole call tree (LLVM
bitcode), so an entry compiled later, or in another process, takes a kernel from the cache
instead of typing and lowering it again: inference and training share most of the forward
pass, and fastbp.precompile's child fills the cache with the trainer's back half while the
fit types its front half. A kernel's symbol names depend only on its source, not on the
process that compiled it (``_stable_uid``), so an entry gets the same IR, and the same
machine code, whichever process typed each kernel. ``FASTBP_KERNEL_CACHE=0`` turns the
kernels' cache off (entries are still cached).

Both keep Numba's semantics: the same IR reaches LLVM with the same flags, so results do
not depend on this module. Where Numba's internals differ from what this module expects
(another Numba release), ``kernel`` falls back to a plain cached ``njit`` function
(correct, slower to compile) and ``LINK_ONLY`` says so.
"""
import hashlib
import os
import shutil
import sys
import time

import numba
from numba import types
from numba.core import caching, config
from numba.core.registry import CPUDispatcher

BASE_OPTIONS = dict(nogil=True, error_model="numpy")

# Every kernel source file is part of every entry's cache key: Numba alone keys a cached
# function by its own file, so an entry would survive a change to a kernel it inlines
# from another file.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _sources_digest():
    h = hashlib.sha256()
    for name in sorted(os.listdir(_PACKAGE_DIR)):
        if name.endswith(".py"):
            with open(os.path.join(_PACKAGE_DIR, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    h.update(f"numba {numba.__version__} {sys.version_info[:2]}".encode())
    # The one setting that changes compiled code without changing the CPU Numba keys on.
    h.update(f"simd {os.environ.get('FASTBP_SIMD_BYTES', '')}".encode())
    return h.hexdigest()


SOURCES_DIGEST = _sources_digest()


def cache_root():
    """The folder of every version's cache: ``FASTBP_CACHE_DIR``, else beside Numba's own
    ``NUMBA_CACHE_DIR`` when set, else the user's cache folder."""
    root = os.environ.get("FASTBP_CACHE_DIR")
    if not root:
        if config.CACHE_DIR:
            root = os.path.join(config.CACHE_DIR, "fastbp")
        else:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
                os.path.expanduser("~"), ".cache")
            root = os.path.join(base, "fastbp")
    return root


def cache_dir():
    """Where compiled entries are kept: a folder of ``cache_root()`` named by the sources'
    digest. Outside the installed package, so a reinstall of the same sources finds them
    (the key holds the sources' digest, the Numba and Python versions, and Numba adds the
    CPU model and features)."""
    return os.path.join(cache_root(), SOURCES_DIGEST[:16])


# Another version's cache folder (an upgrade, an edited source) that no process has used
# for this long is removed: each holds about 10 MB of compiled code.
KEEP_UNUSED_DAYS = 30
USED_MARK = ".last_used"
_DAY = 86400.0
_pruned = False


def is_version_folder(name):
    """Whether ``name`` is one of cache_dir()'s folder names (16 hex digits)."""
    return len(name) == 16 and all(c in "0123456789abcdef" for c in name)


def version_folders():
    """Every version's cache folder in cache_root() (cache_dir() among them once made),
    sorted; nothing else the root holds."""
    root = cache_root()
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted(os.path.join(root, name) for name in names
                  if is_version_folder(name) and os.path.isdir(os.path.join(root, name)))


def last_used(folder):
    """When a process last used the version's cache ``folder`` (its mark, else the
    folder's own time)."""
    try:
        return os.stat(os.path.join(folder, USED_MARK)).st_mtime
    except OSError:
        return os.stat(folder).st_mtime


def prune_cache(now=None):
    """Mark this version's cache as used (at most once a day: a process start should not
    write) and remove the other versions' folders unused for KEEP_UNUSED_DAYS. Only
    folders named as cache_dir() names them are touched. Returns the removed paths."""
    now = time.time() if now is None else now
    mine = cache_dir()
    mark = os.path.join(mine, USED_MARK)
    try:
        if now - os.stat(mark).st_mtime > _DAY:
            os.utime(mark, (now, now))
    except FileNotFoundError:
        with open(mark, "w"):
            pass
        os.utime(mark, (now, now))
    removed = []
    for folder in version_folders():
        if folder != mine and now - last_used(folder) > KEEP_UNUSED_DAYS * _DAY:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _prune_once():
    global _pruned
    if not _pruned:
        _pruned = True
        try:
            prune_cache()
        except OSError:     # a read-only or vanishing cache folder: nothing to tidy
            pass


class _EntryCacheLocator(caching._CacheLocator):
    """Numba's cache locator interface, pointed at ``cache_dir()``."""

    def __init__(self, py_func, py_file):
        self._lineno = py_func.__code__.co_firstlineno
        self._path = os.path.join(cache_dir(), os.path.splitext(os.path.basename(py_file))[0])

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return SOURCES_DIGEST

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
        except OSError:   # not writable: Numba's own locators are tried next
            return None
        _prune_once()
        return self


class _EntryCacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_EntryCacheLocator] + list(caching.CompileResultCacheImpl._locator_classes)


class _EntryCache(caching.FunctionCache):
    _impl_class = _EntryCacheImpl


class _PlainArgs:
    """Literal argument types (a constant ``0`` at a call site) typed as their plain types,
    so that a constant and a variable do not compile a function twice."""

    def get_call_template(self, args, kws):
        args = tuple(types.unliteral(a) for a in args)
        kws = {k: types.unliteral(v) for k, v in kws.items()}
        return super().get_call_template(args, kws)


def _stable_uid(func_id):
    """A kernel's part of its symbol names: Numba numbers functions in the order a process
    compiles them, which would give one kernel typed in two processes two names, and an
    entry linking both two copies of it."""
    key = f"{func_id.modname}.{func_id.func_qualname}:{func_id.firstlineno}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)


class EntryDispatcher(_PlainArgs, CPUDispatcher):
    """A Python-callable compiled function cached in ``cache_dir()``."""

    def enable_caching(self):
        self._cache = _EntryCache(self.py_func)


def entry(func=None, cache=True, **options):
    """Decorator: a compiled function Python calls (see the module docstring)."""
    opts = dict(BASE_OPTIONS)
    opts.update(options)

    def wrap(f):
        d = EntryDispatcher(py_func=f, locals={}, targetoptions=opts)
        if cache:
            d.enable_caching()
        return d
    return wrap if func is None else wrap(func)


try:   # Numba's compiler internals, as of the releases this was written against
    import llvmlite.binding as llvm
    from numba.core import compiler
    from numba.core.codegen import JITCodeLibrary
    from numba.core.compiler import CompilerBase, DefaultPassBuilder
    from numba.core.compiler_machinery import LoweringPass, register_pass
    from numba.core.typed_passes import AnnotateTypes, NativeLowering

    class LinkOnlyLibrary(JITCodeLibrary):
        """A kernel's IR, kept for linking into callers: never optimised or compiled to
        machine code on its own."""

        def get_pointer_to_function(self, name):
            return 0   # no machine code: the dispatcher's entry is never called

        @property
        def codegen(self):
            return _NoEnvCodegen(self._codegen)

        def finalize(self):
            # What CPUCodeLibrary.finalize does first (link the kernels this one calls),
            # without the optimisation and machine code that follow it there.
            seen = set()
            for library in self._linking_libraries:
                if library not in seen:
                    seen.add(library)
                    self._reload_init.update(library._reload_init)
                    self._final_module.link_in(library._get_module_for_linking(),
                                               preserve=True)
            self._finalized = True

        def serialize_using_object_code(self):
            raise TypeError("link-only kernels are cached as IR (_KernelCacheImpl)")

        def serialize_ir(self):
            """The kernel with its callees linked in, as bitcode (what callers link)."""
            self._ensure_finalized()
            return self._final_module.as_bitcode()

        @classmethod
        def from_ir(cls, codegen, name, bitcode):
            self = cls(codegen, name)
            self._final_module = llvm.parse_bitcode(bitcode)
            self._finalized = True
            return self

    class _NoEnvCodegen:
        """The library's codegen, minus ``set_env``: a kernel's environment (used only to
        raise exceptions that carry runtime values, which kernels do not) has no global
        in the JIT engine to point at."""

        def __init__(self, real):
            self._real = real

        def __getattr__(self, name):
            return getattr(self._real, name)

        def set_env(self, env_name, env):
            pass

    @register_pass(mutates_CFG=False, analysis_only=False)
    class UseLinkOnlyLibrary(LoweringPass):
        _name = "fastbp_link_only_library"

        def __init__(self):
            LoweringPass.__init__(self)

        def run_pass(self, state):
            state.library = LinkOnlyLibrary(state.targetctx.codegen(),
                                            state.func_id.func_qualname)
            # One object, unless a pass gave the IR another: naming it twice is harmless.
            for func_id in (state.func_id, state.func_ir.func_id):
                func_id.unique_id = _stable_uid(func_id)
                func_id.unique_name = f"{func_id.func_qualname}${func_id.unique_id}"
            return True

    class _KernelCacheImpl(caching.CompileResultCacheImpl):
        """A kernel's compile result with its library as IR: what Numba's own cache
        keeps for an entry, less the machine code a kernel never has."""
        _locator_classes = _EntryCacheImpl._locator_classes

        def reduce(self, cres):
            fndesc = cres.fndesc
            fndesc.typemap = fndesc.calltypes = None   # as Numba does: not needed, large
            return (cres.library.name, cres.library.serialize_ir(), fndesc,
                    cres.environment, cres.signature, str(cres.type_annotation),
                    cres.reload_init)

        def rebuild(self, target_context, payload):
            name, bitcode, fndesc, env, signature, typeann, reload_init = payload
            for fn in reload_init or ():
                fn()
            library = LinkOnlyLibrary.from_ir(target_context.codegen(), name, bitcode)
            return compiler.CompileResult(
                target_context=target_context,
                typing_context=target_context.typing_context, library=library,
                environment=env, fndesc=fndesc, type_annotation=typeann,
                entry_point=target_context.get_executable(library, fndesc, env),
                signature=signature, objectmode=False, lifted=(), typing_error=None,
                call_helper=None, metadata=None, reload_init=reload_init,
                referenced_envs=())

    class _KernelCache(caching.FunctionCache):
        _impl_class = _KernelCacheImpl

    class KernelCompiler(CompilerBase):
        """Numba's nopython pipeline with a link-only library under the lowering."""

        def define_pipelines(self):
            pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
            pm.add_pass_after(UseLinkOnlyLibrary, AnnotateTypes)
            pm.finalize()
            if not any(p is NativeLowering for p, _ in pm.passes):
                raise RuntimeError("unexpected Numba pipeline")
            return [pm]

    LINK_ONLY = os.environ.get("FASTBP_LINK_ONLY", "1") != "0"
    KERNEL_CACHE = os.environ.get("FASTBP_KERNEL_CACHE", "1") != "0"
except (ImportError, AttributeError):   # pragma: no cover - another Numba release
    KernelCompiler = _KernelCache = None
    LINK_ONLY = KERNEL_CACHE = False


class KernelDispatcher(_PlainArgs, CPUDispatcher):
    """A kernel: compiled into the entries that call it, never called from Python."""

    def enable_caching(self):
        self._cache = _KernelCache(self.py_func)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.py_func.__qualname__} is a kernel, compiled only into the "
                        f"entry points that call it; call it from @njit code, or make a "
                        f"callable copy with fastbp.kernels.jit.entry_for")


KERNELS = {}   # (module, qualname) -> every kernel made in this process, clones included


def kernel(func=None, **options):
    """Decorator: compiled code called only from other compiled code (module docstring)."""
    opts = dict(BASE_OPTIONS, no_cpython_wrapper=True, no_cfunc_wrapper=True)
    opts.update(options)

    def wrap(f):
        if LINK_ONLY:
            d = KernelDispatcher(py_func=f, locals={}, targetoptions=opts,
                                 pipeline_class=KernelCompiler)
            if KERNEL_CACHE:
                d.enable_caching()
        else:   # Fallback: an ordinary cached function (it keeps its Python wrapper).
            del opts["no_cpython_wrapper"], opts["no_cfunc_wrapper"]
            d = entry(f, **opts)
        KERNELS[f.__module__, f.__qualname__] = d
        return d
    return wrap if func is None else wrap(func)


def entry_for(kern, **options):
    """A Python-callable copy of a kernel (tests and benchmarks call kernels this way)."""
    if isinstance(kern, EntryDispatcher):
        return kern
    opts = dict(kern.targetoptions)
    opts.pop("no_cpython_wrapper", None)
    opts.pop("no_cfunc_wrapper", None)
    opts.update(options)
    return entry(kern.py_func, cache=False, **opts)

"""A headless OpenGL backend for MuJoCo, chosen before dm_control is imported.

dm_control fixes its rendering backend for the whole process when it is imported, so
`select_mujoco_gl` must run first: DMCEnv calls it before its lazy dm_control import, and
GymEnv before building one of Gymnasium's MuJoCo environments.
"""

import os
import subprocess
import sys

_GL_PACKAGES = {"egl": "libegl1 libgl1-mesa-dri libopengl0", "osmesa": "libosmesa6"}
_GL_DISABLED = ("off", "disable", "disabled", "false", "0")
# Runs in a child process: a failed GL initialisation can leave PyOpenGL bound to a
# platform for good, so it must not happen in the process that will render.
_GL_PROBE = (
    "from dm_control import _render\n"
    "context = _render.Renderer(16, 16)\n"
    "with context.make_current():\n"
    "    pass\n"
    "context.free()\n"
)
_gl_failure = ""  # why no backend worked, shown when rendering is asked for later


def select_mujoco_gl(need_render: bool = True) -> str:
    """Set MUJOCO_GL to a working headless backend before dm_control is imported.

    A MUJOCO_GL set by the user is kept. Otherwise "egl" is tried, then "osmesa", each by
    creating a 16x16 context in a child process (about 0.4 s, once per process: the choice
    is written to os.environ and inherited by child processes).

    Args:
      need_render: if True, raise when neither backend works; if False, set MUJOCO_GL to
        "disable" instead so that vector-only environments still run.

    Returns:
      The backend now in effect ("egl", "osmesa", "disable", or the user's own value).

    Raises:
      RuntimeError: need_render is True but rendering is off; after a failed probe the
        message names the Debian packages each backend needs.
    """
    backend = os.environ.get("MUJOCO_GL")
    if not backend and "dm_control._render" in sys.modules:
        # Too late to choose: dm_control picked its backend when it was imported.
        backend = sys.modules["dm_control._render"].BACKEND or "default"
    backend = backend or _first_working_gl()
    if need_render and backend.lower() in _GL_DISABLED:
        raise RuntimeError(_gl_failure or f"Rendering is off because MUJOCO_GL={backend!r}.")
    return backend


def _first_working_gl() -> str:
    """Probe egl then osmesa; export and return the first that works, else "disable"."""
    global _gl_failure
    failures = []
    for backend, packages in _GL_PACKAGES.items():
        error = _probe_gl(backend)
        if error is None:
            os.environ["MUJOCO_GL"] = backend
            return backend
        failures.append(f"{backend} ({error}; needs Debian packages: {packages})")
    _gl_failure = "No headless OpenGL backend works for MuJoCo rendering: " + "; ".join(failures)
    os.environ["MUJOCO_GL"] = "disable"
    return "disable"


def _probe_gl(backend: str) -> str | None:
    """Return None if `backend` can create a GL context, else the last error line."""
    env = dict(os.environ, MUJOCO_GL=backend)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _GL_PROBE], env=env, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"

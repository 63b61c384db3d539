/* libswiftvr: the C ABI of swiftvr.h, implemented by embedding the Python runtime.
 *
 * Every call that touches Python takes the interpreter lock (PyGILState_Ensure) and gives it back
 * before returning; copies of frame memory and user callbacks run without it, and the runtime's
 * backends release it while they compute (ONNX Runtime's run(), TensorRT's and torch's kernels),
 * so sessions in different threads make progress together. Python exceptions end at this file:
 * each becomes a status code plus the thread's message (str(exception), the runtime's own text).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "swiftvr.h"

#ifndef SWIFTVR_VERSION
#define SWIFTVR_VERSION "0.0.0"
#endif
#ifndef SWIFTVR_DEFAULT_PYTHON_HOME
#define SWIFTVR_DEFAULT_PYTHON_HOME ""
#endif
#ifndef SWIFTVR_DEFAULT_ROOT
#define SWIFTVR_DEFAULT_ROOT ""
#endif

/* ---- errors: a status plus this thread's message ----------------------------------------------- */

static _Thread_local char error_text[4096];

static swiftvr_status fail(swiftvr_status status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(error_text, sizeof error_text, format, args);
    va_end(args);
    return status;
}

const char *swiftvr_last_error(void) { return error_text; }
const char *swiftvr_version(void) { return SWIFTVR_VERSION; }
int swiftvr_abi_version(void) { return SWIFTVR_ABI_VERSION; }

/* ---- the embedded interpreter (started once, never finalized: backends keep threads and
 *      device memory that Python's shutdown does not know how to end in a foreign host) --------- */

static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static int start_done;
static swiftvr_status start_status;
static char start_error[sizeof error_text];
static int verbose;

static PyObject *load_bundle_fn, *session_cls, *numpy_empty, *resize_frames_fn;
static PyObject *missing_package_exc, *input_size_exc, *setup_exc;

/* The current Python exception as a status and this thread's message; clears it. */
static swiftvr_status from_python(void) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (type == NULL)
        return fail(SWIFTVR_E_INTERNAL, "unknown error (no Python exception was set)");
    PyErr_NormalizeException(&type, &value, &traceback);
    if (verbose) {                        /* asked for: the Python traceback, to stderr */
        Py_XINCREF(type), Py_XINCREF(value), Py_XINCREF(traceback);
        PyErr_Restore(type, value, traceback);
        PyErr_Print();
    }
    swiftvr_status status = SWIFTVR_E_INTERNAL;
    if (missing_package_exc && PyErr_GivenExceptionMatches(type, missing_package_exc))
        status = SWIFTVR_E_MISSING_PACKAGE;
    else if (input_size_exc && PyErr_GivenExceptionMatches(type, input_size_exc))
        status = SWIFTVR_E_INPUT_SIZE;
    else if (setup_exc && PyErr_GivenExceptionMatches(type, setup_exc))
        status = SWIFTVR_E_SETUP;
    else if (PyErr_GivenExceptionMatches(type, PyExc_ValueError))
        status = SWIFTVR_E_ARGUMENT;

    const char *text = NULL;
    PyObject *str = value ? PyObject_Str(value) : NULL;
    if (str)
        text = PyUnicode_AsUTF8(str);
    if (text == NULL) {
        PyErr_Clear();
        text = "";
    }
    const char *name = ((PyTypeObject *)type)->tp_name;
    if (status == SWIFTVR_E_INTERNAL)      /* not an error the runtime raises on purpose: say which */
        fail(status, "%s: %s", name, text);
    else
        fail(status, "%s", text[0] ? text : name);
    Py_XDECREF(str);
    Py_XDECREF(type), Py_XDECREF(value), Py_XDECREF(traceback);
    return status;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Extension modules (numpy, onnxruntime) resolve Python's symbols globally; a host that dlopen()ed
 * this library with RTLD_LOCAL would hide libpython from them. Promote it to global. */
static void make_libpython_global(void) {
    Dl_info info;
    if (dladdr((void *)&Py_InitializeFromConfig, &info) && info.dli_fname)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
}

static swiftvr_status start_interpreter(const char *home, const char *root) {
    char executable[4096];
    if (!home[0] || !is_dir(home))
        return fail(SWIFTVR_E_PYTHON, "SWIFTVR_PYTHON_HOME=%s is not a folder: set it to the project's virtual "
                    "environment (the .venv folder that holds pyvenv.cfg and bin/python)", home);
    snprintf(executable, sizeof executable, "%s/bin/python3", home);
    if (!is_file(executable))
        snprintf(executable, sizeof executable, "%s/bin/python", home);
    if (!is_file(executable))
        return fail(SWIFTVR_E_PYTHON, "SWIFTVR_PYTHON_HOME=%s has no bin/python: set it to the project's virtual "
                    "environment (the .venv folder that holds pyvenv.cfg and bin/python)", home);
    char marker[4096];
    snprintf(marker, sizeof marker, "%s/runtime/__init__.py", root);
    if (!root[0] || !is_file(marker))
        return fail(SWIFTVR_E_PYTHON, "SWIFTVR_ROOT=%s is not the SwiftVR project folder (no runtime/__init__.py "
                    "there): set it to the folder that holds runtime/, engines/ and swiftvr/", root);

    make_libpython_global();
    /* Isolated: the host's PYTHON* variables and argv are not read, no signal handlers are taken
     * (the host keeps Ctrl-C). The executable path makes Python find the venv's pyvenv.cfg, its
     * base installation (the standard library) and its site-packages. */
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 0;
    PyStatus status = PyConfig_SetBytesString(&config, &config.executable, executable);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.program_name, executable);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        return fail(SWIFTVR_E_PYTHON, "Python did not start from SWIFTVR_PYTHON_HOME=%s: %s", home,
                    status.err_msg ? status.err_msg : "unknown error");

    /* The project folder goes first on sys.path, so `import runtime` finds this checkout. */
    PyObject *sys_path = PySys_GetObject("path");            /* borrowed */
    PyObject *root_str = PyUnicode_DecodeFSDefault(root);
    if (sys_path == NULL || root_str == NULL || PyList_Insert(sys_path, 0, root_str) < 0) {
        Py_XDECREF(root_str);
        return from_python();
    }
    Py_DECREF(root_str);
    if (!verbose) {
        /* Nothing printed unless asked: Python warnings and ONNX Runtime's own log stay quiet. */
        if (PyRun_SimpleString("import warnings\nwarnings.simplefilter('ignore')\n"
                               "try:\n    import onnxruntime\n    onnxruntime.set_default_logger_severity(3)\n"
                               "except ImportError:\n    pass\n") < 0)
            return fail(SWIFTVR_E_PYTHON, "Python started but could not be configured");
    }
    return SWIFTVR_OK;
}

static PyObject *attribute(const char *module_name, const char *name) {
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL)
        return NULL;
    PyObject *value = PyObject_GetAttrString(module, name);
    Py_DECREF(module);
    return value;
}

static swiftvr_status import_runtime(void) {
    load_bundle_fn = attribute("runtime", "load_bundle");
    session_cls = load_bundle_fn ? attribute("runtime", "Session") : NULL;
    missing_package_exc = session_cls ? attribute("runtime", "MissingPackageError") : NULL;
    input_size_exc = missing_package_exc ? attribute("runtime", "InputSizeError") : NULL;
    setup_exc = input_size_exc ? attribute("runtime", "RuntimeSetupError") : NULL;
    numpy_empty = setup_exc ? attribute("numpy", "empty") : NULL;
    resize_frames_fn = numpy_empty ? attribute("video.resize", "resize_frames") : NULL;
    if (resize_frames_fn == NULL) {
        char why[sizeof error_text];
        from_python();
        snprintf(why, sizeof why, "%s", error_text);
        return fail(SWIFTVR_E_PYTHON, "the SwiftVR runtime cannot be imported from SWIFTVR_ROOT: %s", why);
    }
    return SWIFTVR_OK;
}

/* Starts Python (or joins the host's) and imports the runtime, once per process. */
static swiftvr_status ensure_started(void) {
    pthread_mutex_lock(&start_lock);
    if (!start_done) {
        start_done = 1;
        const char *v = getenv("SWIFTVR_VERBOSE");
        verbose = v && v[0] && strcmp(v, "0") != 0;
        if (Py_IsInitialized()) {                /* a Python host: use its interpreter as it is */
            PyGILState_STATE gil = PyGILState_Ensure();
            start_status = import_runtime();
            PyGILState_Release(gil);
        } else {
            const char *home = getenv("SWIFTVR_PYTHON_HOME");
            const char *root = getenv("SWIFTVR_ROOT");
            start_status = start_interpreter(home && home[0] ? home : SWIFTVR_DEFAULT_PYTHON_HOME,
                                             root && root[0] ? root : SWIFTVR_DEFAULT_ROOT);
            if (start_status == SWIFTVR_OK)
                start_status = import_runtime();
            if (Py_IsInitialized())
                PyEval_SaveThread();             /* from here on each call takes the lock itself */
        }
        if (start_status != SWIFTVR_OK)
            snprintf(start_error, sizeof start_error, "%s", error_text);
    }
    swiftvr_status status = start_status;
    pthread_mutex_unlock(&start_lock);
    if (status != SWIFTVR_OK)
        return fail(status, "%s", start_error);
    return SWIFTVR_OK;
}

/* ---- models --------------------------------------------------------------------------------------- */

struct swiftvr_model {
    PyObject *model;                      /* runtime LoadedModel */
    int input_width, input_height, output_width, output_height, clip_len;
    char *description;
};

void swiftvr_model_options_init(swiftvr_model_options *options) {
    if (options) {
        memset(options, 0, sizeof *options);
        options->struct_size = sizeof *options;
        options->verify = 1;
    }
}

void swiftvr_session_options_init(swiftvr_session_options *options) {
    if (options) {
        memset(options, 0, sizeof *options);
        options->struct_size = sizeof *options;
        options->overlap = -1;
    }
}

/* A (W, H) tuple attribute of `spec`; 0 on success. */
static int size_of(PyObject *spec, const char *name, int *width, int *height) {
    PyObject *size = PyObject_GetAttrString(spec, name);
    int ok = size && PyArg_ParseTuple(size, "ii", width, height);
    Py_XDECREF(size);
    return ok ? 0 : -1;
}

static int read_spec(swiftvr_model *m) {
    PyObject *spec = PyObject_GetAttrString(m->model, "spec");
    if (spec == NULL)
        return -1;
    int rc = -1;
    PyObject *clip_len = NULL, *text = NULL;
    if (size_of(spec, "input_size", &m->input_width, &m->input_height) == 0 &&
        size_of(spec, "output_size", &m->output_width, &m->output_height) == 0 &&
        (clip_len = PyObject_GetAttrString(spec, "clip_len")) != NULL &&
        (m->clip_len = (int)PyLong_AsLong(clip_len), !PyErr_Occurred()) &&
        (text = PyObject_CallMethod(spec, "describe", NULL)) != NULL) {
        const char *utf8 = PyUnicode_AsUTF8(text);
        if (utf8 && (m->description = strdup(utf8)) != NULL)
            rc = 0;
        else if (utf8)
            PyErr_NoMemory();
    }
    Py_XDECREF(text);
    Py_XDECREF(clip_len);
    Py_DECREF(spec);
    return rc;
}

swiftvr_status swiftvr_model_open(const char *path, const swiftvr_model_options *options, swiftvr_model **model) {
    if (model == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_model_open: model (the result pointer) is NULL");
    *model = NULL;
    if (path == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_model_open: path is NULL");
    swiftvr_model_options opts;
    swiftvr_model_options_init(&opts);
    if (options) {
        if (options->struct_size < offsetof(swiftvr_model_options, verify) + sizeof(int))
            return fail(SWIFTVR_E_ARGUMENT, "swiftvr_model_open: options->struct_size is %zu; set it with "
                        "swiftvr_model_options_init()", options->struct_size);
        opts = *options;
    }
    if (opts.threads < 0)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_model_open: threads must be >= 0 (0: one per core), got %d",
                    opts.threads);
    swiftvr_status status = ensure_started();
    if (status != SWIFTVR_OK)
        return status;

    swiftvr_model *m = calloc(1, sizeof *m);
    if (m == NULL)
        return fail(SWIFTVR_E_INTERNAL, "out of memory");
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *args = NULL, *kwargs = NULL, *value = NULL;
    PyObject *py_path = PyUnicode_DecodeFSDefault(path);
    if (py_path == NULL)
        goto python_error;
    args = opts.backend ? Py_BuildValue("(Os)", py_path, opts.backend) : Py_BuildValue("(O)", py_path);
    kwargs = PyDict_New();
    if (args == NULL || kwargs == NULL)
        goto python_error;
    if (opts.device && ((value = PyUnicode_FromString(opts.device)) == NULL ||
                        PyDict_SetItemString(kwargs, "device", value) < 0))
        goto python_error;
    Py_CLEAR(value);
    if (opts.threads > 0 && ((value = PyLong_FromLong(opts.threads)) == NULL ||
                             PyDict_SetItemString(kwargs, "threads", value) < 0))
        goto python_error;
    if (PyDict_SetItemString(kwargs, "verify", opts.verify ? Py_True : Py_False) < 0)
        goto python_error;
    m->model = PyObject_Call(load_bundle_fn, args, kwargs);
    if (m->model == NULL || read_spec(m) < 0)
        goto python_error;
    Py_XDECREF(value), Py_DECREF(args), Py_DECREF(kwargs), Py_DECREF(py_path);
    PyGILState_Release(gil);
    *model = m;
    return SWIFTVR_OK;

python_error:
    status = from_python();
    Py_XDECREF(value), Py_XDECREF(args), Py_XDECREF(kwargs), Py_XDECREF(py_path), Py_XDECREF(m->model);
    PyGILState_Release(gil);
    free(m->description);
    free(m);
    return status;
}

void swiftvr_model_free(swiftvr_model *model) {
    if (model == NULL)
        return;
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_XDECREF(model->model);
    PyGILState_Release(gil);
    free(model->description);
    free(model);
}

swiftvr_status swiftvr_model_input_size(const swiftvr_model *model, int *width, int *height) {
    if (model == NULL || width == NULL || height == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_model_input_size: model, width and height must not be NULL");
    *width = model->input_width, *height = model->input_height;
    return SWIFTVR_OK;
}

swiftvr_status swiftvr_model_output_size(const swiftvr_model *model, int *width, int *height) {
    if (model == NULL || width == NULL || height == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_model_output_size: model, width and height must not be NULL");
    *width = model->output_width, *height = model->output_height;
    return SWIFTVR_OK;
}

swiftvr_status swiftvr_model_clip_len(const swiftvr_model *model, int *clip_len) {
    if (model == NULL || clip_len == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_model_clip_len: model and clip_len must not be NULL");
    *clip_len = model->clip_len;
    return SWIFTVR_OK;
}

const char *swiftvr_model_describe(const swiftvr_model *model) {
    return model ? model->description : "";
}

/* ---- sessions ------------------------------------------------------------------------------------- */

struct swiftvr_session {
    PyObject *session;                    /* runtime Session */
    PyObject *resize_to;                  /* (width, height) to resize frames of another size to; NULL: refuse them */
    int input_width, input_height, output_width, output_height;
    size_t output_frame_bytes;
    int closed, flushed;
    uint8_t *queue;                       /* restored frames not yet received: [head, count) */
    size_t queue_head, queue_count, queue_capacity;   /* in frames */
    uint64_t frames_given;                /* stream index of the next frame handed out */
    swiftvr_frames_fn callback;
    void *user;
};

swiftvr_status swiftvr_session_open(swiftvr_model *model, const swiftvr_session_options *options,
                                    swiftvr_session **session) {
    if (session == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_open: session (the result pointer) is NULL");
    *session = NULL;
    if (model == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_open: model is NULL");
    swiftvr_session_options opts;
    swiftvr_session_options_init(&opts);
    if (options) {
        if (options->struct_size < offsetof(swiftvr_session_options, resize) + sizeof(int))
            return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_open: options->struct_size is %zu; set it with "
                        "swiftvr_session_options_init()", options->struct_size);
        opts = *options;
    }
    if (opts.in_flight < 0)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_open: in_flight must be >= 0 (0: the model's default), "
                    "got %d", opts.in_flight);
    swiftvr_session *s = calloc(1, sizeof *s);
    if (s == NULL)
        return fail(SWIFTVR_E_INTERNAL, "out of memory");
    s->input_width = model->input_width, s->input_height = model->input_height;
    s->output_width = model->output_width, s->output_height = model->output_height;
    s->output_frame_bytes = (size_t)model->output_width * model->output_height * 3;

    PyGILState_STATE gil = PyGILState_Ensure();
    swiftvr_status status = SWIFTVR_OK;
    PyObject *args = NULL, *kwargs = NULL, *in_flight = NULL;
    /* 0: None, the model's default, as python -m runtime.stream */
    in_flight = opts.in_flight > 0 ? PyLong_FromLong(opts.in_flight) : Py_NewRef(Py_None);
    args = Py_BuildValue("(O)", model->model);
    kwargs = in_flight ? Py_BuildValue("{sOsO}", "in_flight", in_flight,
                                       "overlap", opts.overlap < 0 ? Py_None : opts.overlap ? Py_True : Py_False)
                       : NULL;
    if (args && kwargs)
        s->session = PyObject_Call(session_cls, args, kwargs);
    /* The Session takes frames of the model's size only: the library resizes others first, with
     * video/resize.py (stretched, as python -m runtime.stream --resize on square pixels). */
    if (s->session && opts.resize)
        s->resize_to = Py_BuildValue("(ii)", model->input_width, model->input_height);
    if (s->session == NULL || (opts.resize && s->resize_to == NULL))
        status = from_python();
    Py_XDECREF(in_flight), Py_XDECREF(args), Py_XDECREF(kwargs);
    if (status != SWIFTVR_OK)
        Py_XDECREF(s->session);
    PyGILState_Release(gil);
    if (status != SWIFTVR_OK) {
        free(s);
        return status;
    }
    *session = s;
    return SWIFTVR_OK;
}

swiftvr_status swiftvr_session_set_callback(swiftvr_session *session, swiftvr_frames_fn fn, void *user) {
    if (session == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_set_callback: session is NULL");
    session->callback = fn, session->user = user;
    return SWIFTVR_OK;
}

static inline uint8_t clamp_byte(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

/* One yuv420p frame (BT.601, limited range) to packed RGB24; each chroma sample covers 2x2 pixels. */
static void yuv420p_to_rgb(const uint8_t *src, int width, int height, uint8_t *rgb) {
    int chroma_width = (width + 1) / 2, chroma_height = (height + 1) / 2;
    const uint8_t *plane_y = src, *plane_u = src + (size_t)width * height;
    const uint8_t *plane_v = plane_u + (size_t)chroma_width * chroma_height;
    for (int y = 0; y < height; y++) {
        const uint8_t *row_y = plane_y + (size_t)y * width;
        const uint8_t *row_u = plane_u + (size_t)(y / 2) * chroma_width;
        const uint8_t *row_v = plane_v + (size_t)(y / 2) * chroma_width;
        uint8_t *out = rgb + (size_t)y * width * 3;
        for (int x = 0; x < width; x++) {
            int c = 298 * (row_y[x] - 16), d = row_u[x / 2] - 128, e = row_v[x / 2] - 128;
            out[3 * x + 0] = clamp_byte((c + 409 * e + 128) >> 8);
            out[3 * x + 1] = clamp_byte((c - 100 * d - 208 * e + 128) >> 8);
            out[3 * x + 2] = clamp_byte((c + 516 * d + 128) >> 8);
        }
    }
}

/* Appends the frames of a push/flush result (uint8 [T, H, W, 3]) to the queue. GIL held. */
static swiftvr_status enqueue(swiftvr_session *s, PyObject *frames) {
    Py_buffer view;
    if (PyObject_GetBuffer(frames, &view, PyBUF_C_CONTIGUOUS) < 0)
        return from_python();
    swiftvr_status status = SWIFTVR_OK;
    size_t count = s->output_frame_bytes ? (size_t)view.len / s->output_frame_bytes : 0;
    if (count * s->output_frame_bytes != (size_t)view.len) {
        status = fail(SWIFTVR_E_INTERNAL, "the runtime returned %zd bytes, not whole %dx%d RGB frames", view.len,
                      s->output_width, s->output_height);
    } else if (count) {
        if (s->queue_head) {              /* received frames leave room at the front */
            memmove(s->queue, s->queue + s->queue_head * s->output_frame_bytes,
                    s->queue_count * s->output_frame_bytes);
            s->queue_head = 0;
        }
        if (s->queue_count + count > s->queue_capacity) {
            size_t capacity = s->queue_capacity * 2 > s->queue_count + count ? s->queue_capacity * 2
                                                                              : s->queue_count + count;
            uint8_t *grown = realloc(s->queue, capacity * s->output_frame_bytes);
            if (grown == NULL) {
                PyBuffer_Release(&view);
                return fail(SWIFTVR_E_INTERNAL, "out of memory for %zu restored frames", capacity);
            }
            s->queue = grown, s->queue_capacity = capacity;
        }
        Py_BEGIN_ALLOW_THREADS
        memcpy(s->queue + s->queue_count * s->output_frame_bytes, view.buf, (size_t)view.len);
        Py_END_ALLOW_THREADS
        s->queue_count += count;
    }
    PyBuffer_Release(&view);
    return status;
}

/* With a callback: hands it everything queued. Called without the GIL. */
static void deliver(swiftvr_session *s) {
    if (s->callback && s->queue_count) {
        size_t count = s->queue_count;
        const uint8_t *frames = s->queue + s->queue_head * s->output_frame_bytes;
        s->queue_head = s->queue_count = 0;
        uint64_t first = s->frames_given;
        s->frames_given += count;
        s->callback(s->user, frames, count, first);
    }
}

swiftvr_status swiftvr_session_push(swiftvr_session *session, const uint8_t *frames, size_t count, int width,
                                    int height, swiftvr_format format) {
    if (session == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_push: session is NULL");
    if (frames == NULL && count)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_push: frames is NULL");
    if (format != SWIFTVR_RGB24 && format != SWIFTVR_YUV420P)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_push: unknown pixel format %d", (int)format);
    if (width <= 0 || height <= 0)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_push: frame size %dx%d is not positive", width, height);
    if (session->closed)    /* the text of runtime.Session.push on a closed session */
        return fail(SWIFTVR_E_CLOSED, "push() on a closed Session");
    if (session->flushed)
        return fail(SWIFTVR_E_CLOSED, "push() after flush(): the stream has ended; open a new session");

    size_t rgb_bytes = (size_t)width * height * 3;
    size_t source_bytes = format == SWIFTVR_RGB24 ? rgb_bytes
                                                  : (size_t)width * height + 2 * (size_t)((width + 1) / 2) * ((height + 1) / 2);
    PyGILState_STATE gil = PyGILState_Ensure();
    swiftvr_status status = SWIFTVR_OK;
    PyObject *array = NULL, *result = NULL;
    Py_buffer view;
    /* A numpy array of our own: the Session keeps a view of the last frame for padding, so it must
     * not point into the caller's memory. */
    array = PyObject_CallFunction(numpy_empty, "((niii)s)", (Py_ssize_t)count, height, width, 3, "uint8");
    if (array == NULL || PyObject_GetBuffer(array, &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        status = from_python();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (format == SWIFTVR_RGB24)
        memcpy(view.buf, frames, count * rgb_bytes);
    else
        for (size_t i = 0; i < count; i++)
            yuv420p_to_rgb(frames + i * source_bytes, width, height, (uint8_t *)view.buf + i * rgb_bytes);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (session->resize_to && (width != session->input_width || height != session->input_height)) {
        PyObject *resized = PyObject_CallFunctionObjArgs(resize_frames_fn, array, session->resize_to, NULL);
        Py_DECREF(array);
        array = resized;
        if (array == NULL) {
            status = from_python();
            goto done;
        }
    }
    result = PyObject_CallMethod(session->session, "push", "O", array);
    status = result ? enqueue(session, result) : from_python();
done:
    Py_XDECREF(result), Py_XDECREF(array);
    PyGILState_Release(gil);
    deliver(session);
    return status;
}

swiftvr_status swiftvr_session_flush(swiftvr_session *session) {
    if (session == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_flush: session is NULL");
    if (session->closed)
        return fail(SWIFTVR_E_CLOSED, "flush() on a closed Session");
    if (session->flushed)
        return SWIFTVR_OK;                /* a second flush has nothing left to give */
    session->flushed = 1;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *result = PyObject_CallMethod(session->session, "flush", NULL);
    swiftvr_status status = result ? enqueue(session, result) : from_python();
    Py_XDECREF(result);
    PyGILState_Release(gil);
    deliver(session);
    return status;
}

size_t swiftvr_session_ready(const swiftvr_session *session) {
    return session ? session->queue_count : 0;
}

swiftvr_status swiftvr_session_receive(swiftvr_session *session, uint8_t *out, size_t max_frames, size_t *got) {
    if (got)
        *got = 0;
    if (session == NULL || got == NULL || (out == NULL && max_frames))
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_receive: session, out and got must not be NULL");
    size_t count = session->queue_count < max_frames ? session->queue_count : max_frames;
    if (count) {
        memcpy(out, session->queue + session->queue_head * session->output_frame_bytes,
               count * session->output_frame_bytes);
        session->queue_head += count, session->queue_count -= count;
        if (session->queue_count == 0)
            session->queue_head = 0;
        session->frames_given += count;
    }
    *got = count;
    return SWIFTVR_OK;
}

swiftvr_status swiftvr_session_close(swiftvr_session *session) {
    if (session == NULL)
        return fail(SWIFTVR_E_ARGUMENT, "swiftvr_session_close: session is NULL");
    if (session->closed)
        return SWIFTVR_OK;
    session->closed = 1;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *result = PyObject_CallMethod(session->session, "close", NULL);
    swiftvr_status status = result ? SWIFTVR_OK : from_python();
    Py_XDECREF(result);
    PyGILState_Release(gil);
    return status;
}

void swiftvr_session_free(swiftvr_session *session) {
    if (session == NULL)
        return;
    swiftvr_session_close(session);
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_XDECREF(session->session);
    Py_XDECREF(session->resize_to);
    PyGILState_Release(gil);
    free(session->queue);
    free(session);
}

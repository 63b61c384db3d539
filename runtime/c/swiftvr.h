/* swiftvr.h: the SwiftVR streaming runtime as a C library (libswiftvr).
 *
 *   swiftvr_model *model;   swiftvr_session *s;   size_t got;
 *   if (swiftvr_model_open("engines/360p.plan", NULL, &model)) die(swiftvr_last_error());
 *   swiftvr_session_open(model, NULL, &s);                      // one per stream
 *   for each batch:  swiftvr_session_push(s, rgb, n, width, height, SWIFTVR_RGB24);
 *                    swiftvr_session_receive(s, out, cap, &got);  // or swiftvr_session_set_callback
 *   swiftvr_session_flush(s);   swiftvr_session_receive(...);   // the rest
 *   swiftvr_session_free(s);    swiftvr_model_free(model);
 *
 * This ABI is the boundary: callers depend only on what is declared here. The implementation
 * behind it today embeds the Python runtime (runtime.load_bundle / runtime.Session): the same
 * bundles, the same chunk protocol, byte-identical frames. A native one can replace it later.
 *
 * Frames. RGB24: packed rows, width*height*3 bytes per frame, frames back to back (what
 * `ffmpeg -f rawvideo -pix_fmt rgb24` writes). YUV420P: per frame the Y plane (width*height),
 * then U and V planes of ((width+1)/2)*((height+1)/2) each (ffmpeg's yuv420p), BT.601 limited
 * range, converted to RGB24 in the library. Restored frames are always RGB24 of the output size.
 *
 * Frame rate. Every input frame gives exactly one output frame, in order, so the output has the
 * input's frame rate: output frame k belongs to input frame k's timestamp. Frames come out a chunk
 * at a time (clip_len frames; the first chunk has 4 more), so a stream lags by up to one chunk
 * (up to in_flight chunks with in_flight > 1) until swiftvr_session_flush() gives the rest.
 *
 * Errors. Every function that can fail returns a swiftvr_status (0 is success) and sets the
 * calling thread's message, read with swiftvr_last_error(): the same text the Python runtime
 * gives (`python -m runtime.stream` prints it after "error: "). No exception or traceback crosses
 * this boundary and the library prints nothing (SWIFTVR_VERBOSE=1 also prints each error's
 * Python traceback to stderr, for debugging).
 *
 * Threads. All functions may be called from any thread. A model is shared read-only by any number
 * of sessions, in any threads. A session is used by one thread at a time. Sessions on different
 * threads make progress together: the library takes Python's interpreter lock only around its calls
 * into the runtime (copies and callbacks run without it), and the backends let go of it while they
 * compute (ONNX Runtime's run, TensorRT's and torch's kernels). tests/test_embed.py checks this.
 *
 * Finding Python (on the first swiftvr_model_open). SWIFTVR_PYTHON_HOME: the project's virtual
 * environment (the folder with pyvenv.cfg and bin/python); SWIFTVR_ROOT: the project folder
 * (holding runtime/, engines/, swiftvr/). Both default to the paths compiled in at build time. If
 * the host process already runs Python, the library uses that interpreter as it is.
 */
#ifndef SWIFTVR_H
#define SWIFTVR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SWIFTVR_API __attribute__((visibility("default")))
#else
#define SWIFTVR_API
#endif

/* The ABI version: bumped only when a declaration here changes incompatibly. */
#define SWIFTVR_ABI_VERSION 1

typedef enum swiftvr_status {
    SWIFTVR_OK = 0,
    SWIFTVR_E_ARGUMENT = 1,        /* a NULL pointer, an unknown pixel format, a bad option value */
    SWIFTVR_E_SETUP = 2,           /* the model cannot be loaded or run as asked: no such path, not a
                                      bundle, a damaged or truncated bundle, wrong backend or GPU */
    SWIFTVR_E_MISSING_PACKAGE = 3, /* a backend's Python package is not installed (says what to install) */
    SWIFTVR_E_INPUT_SIZE = 4,      /* frames of another size than the model takes (and resize is off) */
    SWIFTVR_E_CLOSED = 5,          /* push or flush on a closed session */
    SWIFTVR_E_PYTHON = 6,          /* the embedded Python cannot start: SWIFTVR_PYTHON_HOME / SWIFTVR_ROOT wrong */
    SWIFTVR_E_INTERNAL = 7         /* anything else (a bug): the message names the Python exception */
} swiftvr_status;

typedef enum swiftvr_format {
    SWIFTVR_RGB24 = 0,
    SWIFTVR_YUV420P = 1
} swiftvr_format;

typedef struct swiftvr_model swiftvr_model;
typedef struct swiftvr_session swiftvr_session;

/* Options: set struct_size = sizeof(the struct) (the _init functions do), so that later versions
 * can add fields at the end without breaking callers built against this one. NULL: defaults. */
typedef struct swiftvr_model_options {
    size_t struct_size;
    const char *backend;  /* "onnxruntime", "tensorrt", "torch"; NULL: from the bundle */
    const char *device;   /* "cpu", "cuda", "cuda:N"; NULL: the backend's choice (a GPU when there is one) */
    int threads;          /* ONNX Runtime threads per graph; 0: one per core */
    int verify;           /* check every bundle member's sha256 while loading: 1 (default) or 0 */
} swiftvr_model_options;

typedef struct swiftvr_session_options {
    size_t struct_size;
    int in_flight;        /* chunks under way at once; 0: the model's default (3 on a GPU, 1 on the CPU) */
    int overlap;          /* stages on their own lanes: 1 yes, 0 no, -1 (default): when in_flight > 1 */
    int resize;           /* 1: stretch frames of another size to the model's input size (video/resize.py)
                             instead of failing */
} swiftvr_session_options;

SWIFTVR_API void swiftvr_model_options_init(swiftvr_model_options *options);
SWIFTVR_API void swiftvr_session_options_init(swiftvr_session_options *options);

/* The library's version ("0.1.0"); SWIFTVR_ABI_VERSION of the library actually loaded. */
SWIFTVR_API const char *swiftvr_version(void);
SWIFTVR_API int swiftvr_abi_version(void);

/* The calling thread's message for the last failed call ("" when none failed). Valid until the
 * thread's next failing call. */
SWIFTVR_API const char *swiftvr_last_error(void);

/* ---- models: a bundle file (engines/<res>.plan) or an export folder, loaded once ------------- */
SWIFTVR_API swiftvr_status swiftvr_model_open(const char *path, const swiftvr_model_options *options,
                                              swiftvr_model **model);
/* Frees the handle. Sessions made from the model keep what they need: free them before or after. */
SWIFTVR_API void swiftvr_model_free(swiftvr_model *model);

SWIFTVR_API swiftvr_status swiftvr_model_input_size(const swiftvr_model *model, int *width, int *height);
SWIFTVR_API swiftvr_status swiftvr_model_output_size(const swiftvr_model *model, int *width, int *height);
/* Frames per middle chunk (the first chunk has 4 more): how far output lags input. */
SWIFTVR_API swiftvr_status swiftvr_model_clip_len(const swiftvr_model *model, int *clip_len);
/* One line: backend, device, precision, sizes, chunk settings, source. Owned by the model. */
SWIFTVR_API const char *swiftvr_model_describe(const swiftvr_model *model);

/* ---- sessions: one per video stream ----------------------------------------------------------- */
SWIFTVR_API swiftvr_status swiftvr_session_open(swiftvr_model *model, const swiftvr_session_options *options,
                                                swiftvr_session **session);

/* Called with restored RGB24 frames (`count` frames of the output size, back to back; the memory is
 * valid only during the call), `first` the stream index of the first one. Runs on the thread that
 * calls push or flush, without the interpreter lock held. */
typedef void (*swiftvr_frames_fn)(void *user, const uint8_t *frames, size_t count, uint64_t first);

/* With a callback set, restored frames go to it as push/flush make them and nothing is queued for
 * swiftvr_session_receive. NULL: back to queueing. */
SWIFTVR_API swiftvr_status swiftvr_session_set_callback(swiftvr_session *session, swiftvr_frames_fn fn, void *user);

/* `count` frames of width x height (the model's input size; any size with resize) from caller
 * memory; the library copies them before it returns. Restored frames that are ready are queued (or
 * given to the callback). count 0 only collects finished work. */
SWIFTVR_API swiftvr_status swiftvr_session_push(swiftvr_session *session, const uint8_t *frames, size_t count,
                                                int width, int height, swiftvr_format format);
/* End of stream: restores the frames still buffered; everything left is queued (or given).
 * Nothing can be pushed after it. */
SWIFTVR_API swiftvr_status swiftvr_session_flush(swiftvr_session *session);

/* Restored frames waiting in the queue. */
SWIFTVR_API size_t swiftvr_session_ready(const swiftvr_session *session);
/* Moves up to max_frames queued frames (RGB24, output size, in order) into `out`; *got says how
 * many. Frames that do not fit stay queued. */
SWIFTVR_API swiftvr_status swiftvr_session_receive(swiftvr_session *session, uint8_t *out, size_t max_frames,
                                                   size_t *got);

/* Ends the stream early or after flush: lets the backend's per-stream resources go. Later pushes
 * fail with SWIFTVR_E_CLOSED; frames already queued can still be received. */
SWIFTVR_API swiftvr_status swiftvr_session_close(swiftvr_session *session);
/* Closes (if needed) and frees the handle. NULL is allowed. */
SWIFTVR_API void swiftvr_session_free(swiftvr_session *session);

#ifdef __cplusplus
}
#endif

#endif /* SWIFTVR_H */

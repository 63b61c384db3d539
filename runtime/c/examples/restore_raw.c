/* restore_raw: raw frames on stdin -> restored raw RGB24 frames on stdout, through libswiftvr.
 *
 *   ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 - | restore_raw engines/360p.plan 480x270 \
 *       | ffplay -f rawvideo -pixel_format rgb24 -video_size 960x540 -framerate 30 -
 *
 *   restore_raw MODEL WxH [--yuv420p] [--resize] [--batch N] [--in-flight N] [--threads N] [--bench ROUNDS]
 *
 * WxH: the frames' size: the model's input size, or any with --resize.
 * --yuv420p: stdin holds yuv420p frames (ffmpeg -pix_fmt yuv420p) instead of rgb24.
 * --resize: WxH may differ from the model's input size: the frames are stretched to it.
 * --batch N: frames per push (default 1: each frame is pushed as soon as it arrives; at most 1024).
 * --in-flight N: chunks under way at once (default: the model's; at most 64).
 * --threads N: ONNX Runtime threads per graph (default: one per core; at most 256).
 * --bench ROUNDS: read all of stdin first, then restore it ROUNDS times (a new session each; at most
 *   1000) and print "frames/s <value>" per round to stdout (timing push..flush only, no I/O).
 * Exit status 0; 1 with "error: <message>" on stderr; 2 bad arguments (nothing read or written).
 * A partial frame at the end of stdin is an error (1) after the whole frames before it are restored.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "swiftvr.h"

/* Upper bounds of the numeric options. Each is far past any gain, so that a typo (an extra digit,
 * a byte count for a frame count) is refused at once instead of running for minutes or asking for
 * terabytes:
 *   batch: the session restores clip_len frames (8..32 in the bundles) at a time whatever the push
 *     size, so larger pushes only grow the read buffer (1024 frames of 1920x1080: 6.4 GB);
 *   in flight: each chunk under way holds its frames and device arrays, and 3 already keeps every
 *     stage busy (runtime/backend.py default_in_flight);
 *   threads: ONNX Runtime starts that many threads for each graph of the bundle, and threads past
 *     the cores only contend (--threads 100000 ran past 120 s before restoring a frame). A fixed
 *     bound, not the online CPU count, because that count is not a container's CPU quota and the
 *     same command should be accepted on every machine;
 *   rounds: each round restores all of stdin again. */
#define MAX_BATCH 1024
#define MAX_IN_FLIGHT 64
#define MAX_THREADS 256
#define MAX_ROUNDS 1000

/* Prints "error: <message>" on stderr; returns `status` (1: the run failed, 2: bad arguments). */
static int fail(int status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("error: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    return status;
}

static int die(const char *what) {
    return fail(1, "%s", what);
}

/* The decimal number at the start of `text` into *value if it is from 1 to `most` (digits only: no
 * sign, no space, no overflow); returns the character after it, or NULL. */
static const char *whole_number(const char *text, long most, int *value) {
    char *end;
    if (!isdigit((unsigned char)*text))
        return NULL;
    errno = 0;
    long number = strtol(text, &end, 10);
    if (errno == ERANGE || number < 1 || number > most)
        return NULL;
    *value = (int)number;
    return end;
}

/* *product = a * b; 0 if that does not fit a size_t. */
static int multiply(size_t a, size_t b, size_t *product) {
    if (b && a > SIZE_MAX / b)
        return 0;
    *product = a * b;
    return 1;
}

/* Bytes of one input frame; 0 if they do not fit a size_t. */
static size_t frame_bytes(int width, int height, swiftvr_format format) {
    size_t luma, chroma, bytes;
    if (!multiply((size_t)width, (size_t)height, &luma))
        return 0;
    if (format == SWIFTVR_RGB24)
        return multiply(luma, 3, &bytes) ? bytes : 0;
    if (!multiply((size_t)(width / 2 + width % 2), (size_t)(height / 2 + height % 2), &chroma) ||
        chroma > (SIZE_MAX - luma) / 2)
        return 0;
    return luma + 2 * chroma;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Writes every restored frame that is ready; 0 on success. */
static int drain(swiftvr_session *s, uint8_t *out, size_t out_frame, FILE *sink) {
    size_t got;
    while (swiftvr_session_ready(s)) {
        if (swiftvr_session_receive(s, out, 1, &got) != SWIFTVR_OK)
            return -1;
        if (sink && fwrite(out, out_frame, got, sink) != got)
            return -1;
    }
    return 0;
}

/* The error for `partial` bytes left after `whole` frames (status 1; 0 when none were left): the
 * frames before them were restored, as runtime.stream does with a truncated stdin. */
static int partial_frame(size_t whole, size_t partial, size_t in_frame, int width, int height,
                         swiftvr_format format) {
    if (!partial)
        return 0;
    return fail(1, "stdin: truncated frame %zu: %zu of %zu bytes (%dx%d %s) left over; the %zu whole frames "
                   "before it were restored", whole, partial, in_frame, width, height,
                format == SWIFTVR_RGB24 ? "rgb24" : "yuv420p", whole);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL WxH [--yuv420p] [--resize] [--batch N] [--in-flight N] [--threads N] "
                        "[--bench ROUNDS]  (raw frames on stdin, RGB24 on stdout)\n", argv[0]);
        return 2;
    }
    int width, height, batch = 1, rounds = 0;
    swiftvr_format format = SWIFTVR_RGB24;
    swiftvr_model_options model_options;
    swiftvr_session_options session_options;
    swiftvr_model_options_init(&model_options);
    swiftvr_session_options_init(&session_options);
    const char *end = whole_number(argv[2], INT_MAX, &width);
    if (!end || *end != 'x' || !(end = whole_number(end + 1, INT_MAX, &height)) || *end)
        return fail(2, "the frame size must look like WIDTHxHEIGHT, e.g. 480x270, got %s", argv[2]);
    const struct { const char *flag; long most; int *value; } numbers[] = {
        {"--batch", MAX_BATCH, &batch},
        {"--in-flight", MAX_IN_FLIGHT, &session_options.in_flight},
        {"--threads", MAX_THREADS, &model_options.threads},
        {"--bench", MAX_ROUNDS, &rounds}};
    for (int i = 3; i < argc; i++) {
        size_t k = 0, count = sizeof numbers / sizeof numbers[0];
        if (!strcmp(argv[i], "--yuv420p")) {
            format = SWIFTVR_YUV420P;
            continue;
        }
        if (!strcmp(argv[i], "--resize")) {
            session_options.resize = 1;
            continue;
        }
        while (k < count && strcmp(argv[i], numbers[k].flag))
            k++;
        if (k == count)
            return fail(2, "unknown option %s", argv[i]);
        if (i + 1 == argc)
            return fail(2, "%s needs a value", argv[i]);
        i++;
        if (!(end = whole_number(argv[i], numbers[k].most, numbers[k].value)) || *end)
            return fail(2, "%s takes a whole number from 1 to %ld, got %s", numbers[k].flag, numbers[k].most,
                        argv[i]);
    }

    swiftvr_model *model;
    if (swiftvr_model_open(argv[1], &model_options, &model) != SWIFTVR_OK)
        return die(swiftvr_last_error());
    int in_width, in_height, out_width, out_height;
    swiftvr_model_input_size(model, &in_width, &in_height);
    swiftvr_model_output_size(model, &out_width, &out_height);
    /* Checked here, before any frame is read or memory is sized from WxH: any other size would only
     * fail at the first push, and with an empty stdin not at all. */
    if (!session_options.resize && (width != in_width || height != in_height)) {
        swiftvr_model_free(model);
        return fail(2, "the frames are %dx%d, but %s takes %dx%d frames (--resize stretches them)", width, height,
                    argv[1], in_width, in_height);
    }
    size_t in_frame = frame_bytes(width, height, format);
    size_t out_frame = frame_bytes(out_width, out_height, SWIFTVR_RGB24);
    size_t in_batch;
    uint8_t *out = out_frame ? malloc(out_frame) : NULL;
    if (!in_frame || !multiply(in_frame, (size_t)batch, &in_batch) || !out) {
        free(out);
        swiftvr_model_free(model);
        return fail(1, "out of memory for %dx%d frames", width, height);
    }
    int status = 0;

    if (rounds) {                 /* benchmark: all frames in memory, time the API calls only */
        size_t count = 0, capacity = 0, partial = 0, bytes;
        uint8_t *all = NULL;
        for (;;) {
            if (count == capacity) {
                uint8_t *grown = NULL;
                capacity = capacity ? 2 * capacity : 64;
                if (capacity < count || !multiply(capacity, in_frame, &bytes) || !(grown = realloc(all, bytes))) {
                    status = fail(1, "stdin holds more frames than fit in memory (%zu read)", count);
                    break;
                }
                all = grown;
            }
            /* In bytes, not whole frames, so that a partial frame at the end is counted. */
            size_t got = fread(all + count * in_frame, 1, in_frame, stdin);
            if (got < in_frame) {
                partial = got;
                break;
            }
            count++;
        }
        if (!status && ferror(stdin))
            status = die("cannot read stdin");
        for (int r = 0; r < rounds && !status; r++) {
            swiftvr_session *s;
            if (swiftvr_session_open(model, &session_options, &s) != SWIFTVR_OK) {
                status = die(swiftvr_last_error());
                break;
            }
            double start = now();
            for (size_t at = 0; at < count && !status; at += batch) {
                size_t n = count - at < (size_t)batch ? count - at : (size_t)batch;
                if (swiftvr_session_push(s, all + at * in_frame, n, width, height, format) != SWIFTVR_OK ||
                    drain(s, out, out_frame, NULL) < 0)
                    status = die(swiftvr_last_error());
            }
            if (!status && (swiftvr_session_flush(s) != SWIFTVR_OK || drain(s, out, out_frame, NULL) < 0))
                status = die(swiftvr_last_error());
            double seconds = now() - start;
            if (!status)
                printf("frames/s %.4f\n", count / seconds);
            swiftvr_session_free(s);
        }
        if (!status && fflush(stdout) != 0)
            status = die("cannot write to stdout");
        if (!status)
            status = partial_frame(count, partial, in_frame, width, height, format);
        free(all);
    } else {                      /* stream: push frames as they arrive, write what is ready */
        swiftvr_session *s;
        size_t whole = 0, partial = 0;
        uint8_t *frames = malloc(in_batch);
        if (!frames)
            status = fail(1, "out of memory for --batch %d frames of %dx%d (%zu bytes)", batch, width, height,
                          in_batch);
        else if (swiftvr_session_open(model, &session_options, &s) != SWIFTVR_OK)
            status = die(swiftvr_last_error());
        else {
            for (;;) {
                /* Bytes, not frames: fread of whole frames would drop a partial one without a word. */
                size_t got = fread(frames, 1, in_batch, stdin), n = got / in_frame;
                if (n && swiftvr_session_push(s, frames, n, width, height, format) != SWIFTVR_OK) {
                    status = die(swiftvr_last_error());
                    break;
                }
                whole += n;
                if (drain(s, out, out_frame, stdout) < 0) {
                    status = die("cannot write to stdout");
                    break;
                }
                if (got < in_batch) {
                    partial = got - n * in_frame;
                    break;
                }
            }
            /* A read error or a partial frame ends the input like its end would: what was whole
             * is still restored and written, then the error is reported. */
            if (!status && swiftvr_session_flush(s) != SWIFTVR_OK)
                status = die(swiftvr_last_error());
            if (!status && (drain(s, out, out_frame, stdout) < 0 || fflush(stdout) != 0))
                status = die("cannot write to stdout");
            if (!status && ferror(stdin))
                status = die("cannot read stdin");
            if (!status)
                status = partial_frame(whole, partial, in_frame, width, height, format);
            swiftvr_session_free(s);
        }
        free(frames);
    }
    free(out);
    swiftvr_model_free(model);
    return status;
}

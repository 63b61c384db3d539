/* restore_raw: raw frames on stdin -> restored raw RGB24 frames on stdout, through libswiftvr.
 *
 *   ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 - | restore_raw engines/360p.plan 480x270 \
 *       | ffplay -f rawvideo -pixel_format rgb24 -video_size 960x540 -framerate 30 -
 *
 *   restore_raw MODEL WxH [--yuv420p] [--resize] [--batch N] [--in-flight N] [--threads N] [--bench ROUNDS]
 *
 * --yuv420p: stdin holds yuv420p frames (ffmpeg -pix_fmt yuv420p) instead of rgb24.
 * --resize: WxH may differ from the model's input size: the frames are stretched to it.
 * --batch N: frames per push (default 1: each frame is pushed as soon as it arrives).
 * --bench ROUNDS: read all of stdin first, then restore it ROUNDS times (a new session each) and
 *   print "frames/s <value>" per round to stdout (timing push..flush only, no I/O).
 * Exit status 0, or 1 with "error: <message>" on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "swiftvr.h"

static int die(const char *what) {
    fprintf(stderr, "error: %s\n", what);
    return 1;
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
    if (sscanf(argv[2], "%dx%d", &width, &height) != 2 || width <= 0 || height <= 0)
        return die("the frame size must look like WIDTHxHEIGHT, e.g. 480x270");
    for (int i = 3; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(argv[i], "--yuv420p"))
            format = SWIFTVR_YUV420P;
        else if (!strcmp(argv[i], "--resize"))
            session_options.resize = 1;
        else if (!strcmp(argv[i], "--batch") && (batch = atoi(value)) > 0)
            i++;
        else if (!strcmp(argv[i], "--in-flight") && (session_options.in_flight = atoi(value)) > 0)
            i++;
        else if (!strcmp(argv[i], "--threads") && (model_options.threads = atoi(value)) > 0)
            i++;
        else if (!strcmp(argv[i], "--bench") && (rounds = atoi(value)) > 0)
            i++;
        else {
            fprintf(stderr, "error: unknown or incomplete option %s\n", argv[i]);
            return 2;
        }
    }

    swiftvr_model *model;
    if (swiftvr_model_open(argv[1], &model_options, &model) != SWIFTVR_OK)
        return die(swiftvr_last_error());
    int out_width, out_height;
    swiftvr_model_output_size(model, &out_width, &out_height);
    size_t in_frame = format == SWIFTVR_RGB24 ? (size_t)width * height * 3
                                              : (size_t)width * height + 2 * (size_t)((width + 1) / 2) * ((height + 1) / 2);
    size_t out_frame = (size_t)out_width * out_height * 3;
    uint8_t *out = malloc(out_frame);
    int status = 0;

    if (rounds) {                 /* benchmark: all frames in memory, time the API calls only */
        size_t count = 0, capacity = 0;
        uint8_t *all = NULL;
        for (;;) {
            if (count == capacity) {
                capacity = capacity ? 2 * capacity : 64;
                all = realloc(all, capacity * in_frame);
            }
            if (fread(all + count * in_frame, in_frame, 1, stdin) != 1)
                break;
            count++;
        }
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
        free(all);
    } else {                      /* stream: push frames as they arrive, write what is ready */
        swiftvr_session *s;
        uint8_t *frames = malloc(in_frame * batch);
        if (swiftvr_session_open(model, &session_options, &s) != SWIFTVR_OK)
            status = die(swiftvr_last_error());
        else {
            for (;;) {
                size_t n = fread(frames, in_frame, batch, stdin);
                if (n && swiftvr_session_push(s, frames, n, width, height, format) != SWIFTVR_OK) {
                    status = die(swiftvr_last_error());
                    break;
                }
                if (drain(s, out, out_frame, stdout) < 0) {
                    status = die("cannot write to stdout");
                    break;
                }
                if (n < (size_t)batch)
                    break;
            }
            if (!status && swiftvr_session_flush(s) != SWIFTVR_OK)
                status = die(swiftvr_last_error());
            if (!status && drain(s, out, out_frame, stdout) < 0)
                status = die("cannot write to stdout");
            swiftvr_session_free(s);
        }
        free(frames);
    }
    free(out);
    swiftvr_model_free(model);
    return status;
}

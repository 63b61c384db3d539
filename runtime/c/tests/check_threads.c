/* check_threads: do sessions in two threads make progress together?
 *
 *   check_threads MODEL
 *
 * Thread A pushes whole chunks (the backend computes inside push). Meanwhile thread B keeps calling
 * push with no frames, which needs the interpreter lock but no backend work. If the library (or a
 * backend) held the lock while computing, B would stall for the whole of each of A's backend calls.
 * Prints "a_seconds <s> b_calls_during_a <n> b_longest_wait <s>" for tests/test_embed.py to judge.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "swiftvr.h"

static swiftvr_model *model;
static int width, height, clip_len;
static volatile int a_running = 1;
static double a_start, a_end, b_longest;
static long b_calls;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *thread_a(void *arg) {
    swiftvr_session *s;
    int chunks = 3, frames = clip_len + 4 + (chunks - 1) * clip_len;
    uint8_t *rgb = calloc((size_t)frames, (size_t)width * height * 3);
    if (swiftvr_session_open(model, NULL, &s) != SWIFTVR_OK)
        exit(fprintf(stderr, "error: %s\n", swiftvr_last_error()));
    a_start = now();
    /* The first chunk is clip_len + 4 frames, each later one clip_len: one chunk per push. */
    for (int at = 0, n = clip_len + 4; at < frames; at += n, n = clip_len)
        if (swiftvr_session_push(s, rgb + (size_t)at * width * height * 3, n, width, height, SWIFTVR_RGB24))
            exit(fprintf(stderr, "error: %s\n", swiftvr_last_error()));
    a_end = now();
    a_running = 0;
    swiftvr_session_free(s);
    free(rgb);
    return arg;
}

static void *thread_b(void *arg) {
    swiftvr_session *s;
    if (swiftvr_session_open(model, NULL, &s) != SWIFTVR_OK)
        exit(fprintf(stderr, "error: %s\n", swiftvr_last_error()));
    double last = now();
    while (a_running) {
        if (swiftvr_session_push(s, NULL, 0, width, height, SWIFTVR_RGB24))
            exit(fprintf(stderr, "error: %s\n", swiftvr_last_error()));
        double t = now();
        if (a_start > 0 && t > a_start && a_running) {
            b_calls++;
            if (t - last > b_longest && last > a_start)
                b_longest = t - last;
        }
        last = t;
    }
    swiftvr_session_free(s);
    return arg;
}

int main(int argc, char **argv) {
    if (argc != 2)
        return fprintf(stderr, "usage: %s MODEL\n", argv[0]), 2;
    if (swiftvr_model_open(argv[1], NULL, &model) != SWIFTVR_OK)
        return fprintf(stderr, "error: %s\n", swiftvr_last_error()), 1;
    swiftvr_model_input_size(model, &width, &height);
    swiftvr_model_clip_len(model, &clip_len);
    pthread_t a, b;
    pthread_create(&b, NULL, thread_b, NULL);
    pthread_create(&a, NULL, thread_a, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("a_seconds %.4f b_calls_during_a %ld b_longest_wait %.4f\n", a_end - a_start, b_calls, b_longest);
    swiftvr_model_free(model);
    return 0;
}

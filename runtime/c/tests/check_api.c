/* check_api: drives every error path of the C API; prints "case<TAB>status<TAB>message" per case.
 *
 *   check_api MODEL TRUNCATED_MODEL NOT_A_MODEL
 *
 * tests/test_embed.py compares each status and message with what the Python runtime says.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "swiftvr.h"

static void report(const char *name, swiftvr_status status) {
    printf("%s\t%d\t%s\n", name, (int)status, status == SWIFTVR_OK ? "" : swiftvr_last_error());
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL TRUNCATED_MODEL NOT_A_MODEL\n", argv[0]);
        return 2;
    }
    swiftvr_model *model = NULL, *other = NULL;
    swiftvr_session *session = NULL;
    swiftvr_model_options options;
    size_t got;
    printf("version\t%d\t%s\n", swiftvr_abi_version(), swiftvr_version());

    report("open_null_path", swiftvr_model_open(NULL, NULL, &model));
    report("open_null_result", swiftvr_model_open(argv[1], NULL, NULL));
    report("open_missing_path", swiftvr_model_open("/nonexistent/tiny.plan", NULL, &other));
    report("open_truncated", swiftvr_model_open(argv[2], NULL, &other));
    report("open_not_a_model", swiftvr_model_open(argv[3], NULL, &other));
    swiftvr_model_options_init(&options);
    options.backend = "tensorrt";
    report("open_wrong_backend", swiftvr_model_open(argv[1], &options, &other));
    options.backend = "nonsense";
    report("open_unknown_backend", swiftvr_model_open(argv[1], &options, &other));
    options.backend = NULL, options.struct_size = 4;
    report("open_bad_struct_size", swiftvr_model_open(argv[1], &options, &other));
    if (other != NULL)
        return fprintf(stderr, "a failed open gave a model\n"), 1;

    report("open", swiftvr_model_open(argv[1], NULL, &model));
    if (model == NULL)
        return 1;
    int width, height, out_width, out_height, clip_len;
    report("input_size", swiftvr_model_input_size(model, &width, &height));
    report("output_size", swiftvr_model_output_size(model, &out_width, &out_height));
    report("clip_len", swiftvr_model_clip_len(model, &clip_len));
    printf("sizes\t0\t%dx%d %dx%d %d\n", width, height, out_width, out_height, clip_len);
    report("input_size_null", swiftvr_model_input_size(NULL, &width, &height));
    report("session_null_model", swiftvr_session_open(NULL, NULL, &session));
    report("session_null_result", swiftvr_session_open(model, NULL, NULL));
    swiftvr_session_options session_options;
    swiftvr_session_options_init(&session_options);
    session_options.in_flight = -1;
    report("session_bad_in_flight", swiftvr_session_open(model, &session_options, &session));

    report("session", swiftvr_session_open(model, NULL, &session));
    size_t frame = (size_t)(width + 1) * height * 3;
    uint8_t *frames = calloc(2, frame);
    uint8_t *out = malloc((size_t)out_width * out_height * 3);
    report("push_null_session", swiftvr_session_push(NULL, frames, 1, width, height, SWIFTVR_RGB24));
    report("push_null_frames", swiftvr_session_push(session, NULL, 1, width, height, SWIFTVR_RGB24));
    report("push_bad_format", swiftvr_session_push(session, frames, 1, width, height, (swiftvr_format)7));
    report("push_wrong_size", swiftvr_session_push(session, frames, 1, width + 1, height, SWIFTVR_RGB24));
    report("push", swiftvr_session_push(session, frames, 2, width, height, SWIFTVR_RGB24));
    report("receive_null_got", swiftvr_session_receive(session, out, 1, NULL));
    report("receive_null_out", swiftvr_session_receive(session, NULL, 1, &got));
    report("close", swiftvr_session_close(session));
    report("push_after_close", swiftvr_session_push(session, frames, 1, width, height, SWIFTVR_RGB24));
    report("flush_after_close", swiftvr_session_flush(session));
    report("close_again", swiftvr_session_close(session));
    report("flush_null", swiftvr_session_flush(NULL));
    printf("describe_null\t0\t%s\n", swiftvr_model_describe(NULL));
    swiftvr_session_free(session);
    swiftvr_session_free(NULL);

    /* A session outlives its model's handle: the model is kept until the session goes. */
    report("session2", swiftvr_session_open(model, NULL, &session));
    swiftvr_model_free(model);
    swiftvr_model_free(NULL);
    report("push_after_model_free", swiftvr_session_push(session, frames, 2, width, height, SWIFTVR_RGB24));
    report("flush_after_model_free", swiftvr_session_flush(session));
    report("receive", swiftvr_session_receive(session, out, 1, &got));
    printf("received\t%zu\t%zu\n", got, swiftvr_session_ready(session));
    report("push_after_flush", swiftvr_session_push(session, frames, 1, width, height, SWIFTVR_RGB24));
    swiftvr_session_free(session);
    free(frames);
    free(out);
    return 0;
}

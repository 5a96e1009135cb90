/* The whole user journey through the C API on the tiny fixture: load a base, train a LoRA
 * delta, evaluate, save and reload it, run sessions with and without it, switch deltas, and
 * the error paths (NULL arguments, missing files, a corrupt delta, another base's delta, a
 * label out of range). Exits non-zero when a check fails.
 *
 * usage: journey FIXTURES_DIR SCRATCH_DIR */
#include <math.h>
#include <stdlib.h>

#include "check.h"

#define HIDDEN_MAX (ROWS * SEQ * 64)

static float plain[HIDDEN_MAX], trained[HIDDEN_MAX], reloaded[HIDDEN_MAX], scratch[HIDDEN_MAX];

static int same_bits(const float *a, const float *b, size_t n) {
    return n > 0 && memcmp(a, b, n * sizeof(float)) == 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s FIXTURES_DIR SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    char model[4096], llama[4096], delta_path[4096], bad_path[4096];
    snprintf(model, sizeof model, "%s/tiny-bert.dynamo.onnx", argv[1]);
    snprintf(llama, sizeof llama, "%s/tiny-llama.dynamo.onnx", argv[1]);
    snprintf(delta_path, sizeof delta_path, "%s/user.ktd", argv[2]);
    snprintf(bad_path, sizeof bad_path, "%s/corrupt.ktd", argv[2]);

    CHECK(strlen(kt_version()) > 0);
    CHECK(strcmp(kt_status_name(KT_ERR_DELTA_WRONG_BASE), "KT_ERR_DELTA_WRONG_BASE") == 0);
    CHECK(strcmp(kt_status_name(12345), "KT_UNKNOWN_STATUS") == 0);

    /* Errors leave out-parameters alone and explain themselves. */
    kt_base *base = (kt_base *)(uintptr_t)0x1;
    CHECK(kt_base_load(NULL, KT_WEIGHTS_AS_SHIPPED, &base) == KT_ERR_NULL_ARGUMENT);
    CHECK(base == (kt_base *)(uintptr_t)0x1);
    CHECK(strstr(kt_last_error_message(), "path") != NULL);
    CHECK(kt_base_load("/nonexistent/model.onnx", KT_WEIGHTS_AS_SHIPPED, &base) == KT_ERR_IO);
    CHECK(base == (kt_base *)(uintptr_t)0x1);
    CHECK(kt_base_load(model, 99, &base) == KT_ERR_INVALID_ARGUMENT);
    CHECK(kt_base_load(model, KT_WEIGHTS_AS_SHIPPED, NULL) == KT_ERR_NULL_ARGUMENT);

    base = NULL;
    OK(kt_base_load(model, KT_WEIGHTS_AS_SHIPPED, &base));
    CHECK(base != NULL);
    CHECK(strcmp(kt_last_error_message(), "") == 0);
    uint8_t fp[32] = {0}, zero[32] = {0};
    OK(kt_base_fingerprint(base, fp));
    CHECK(memcmp(fp, zero, 32) != 0);

    toy_batch data[BATCHES];
    toy_data(data, BATCHES, 1);
    kt_batch batches[BATCHES];
    for (int b = 0; b < BATCHES; b++) batches[b] = as_batch(&data[b]);

    /* A bad configuration is refused with its kind. */
    kt_train_config config = kt_train_config_default();
    CHECK(config.method == KT_METHOD_LORA && config.lora_rank == 8 && config.classes == 2);
    kt_trainer *trainer = NULL;
    config.lora_rank = 0;
    CHECK(kt_trainer_new(base, &config, &trainer) == KT_ERR_CONFIG);
    CHECK(trainer == NULL);
    const char *nowhere[] = {"no_such_module"};
    config = kt_train_config_default();
    config.lora_targets = nowhere;
    config.lora_target_count = 1;
    CHECK(kt_trainer_new(base, &config, &trainer) == KT_ERR_CONFIG);

    /* Train LoRA r=4 on query and value. */
    const char *targets[] = {"query", "value"};
    config = kt_train_config_default();
    config.lora_rank = 4;
    config.lora_alpha = 8.0f;
    config.lora_targets = targets;
    config.lora_target_count = 2;
    config.learning_rate = 5e-2f;
    config.seed = 3;
    config.threads = 1;
    OK(kt_trainer_new(base, &config, &trainer));

    kt_evaluation before, after;
    OK(kt_trainer_evaluate(trainer, batches, BATCHES, &before));
    CHECK(before.rows == BATCHES * ROWS);
    kt_step_report step = {0};
    for (int epoch = 0; epoch < 5; epoch++)
        for (int b = 0; b < BATCHES; b++) OK(kt_trainer_step(trainer, &batches[b], &step));
    CHECK(step.steps == 5 * BATCHES && step.applied == 1 && isfinite(step.loss));
    OK(kt_trainer_evaluate(trainer, batches, BATCHES, &after));
    CHECK(after.loss < before.loss * 0.9f);
    printf("loss %.4f -> %.4f, accuracy %.3f -> %.3f\n", before.loss, after.loss, before.accuracy, after.accuracy);

    /* A label past the head's classes is an input error; the trainer stays usable. */
    toy_batch wrong = data[0];
    wrong.labels[3] = 2;
    kt_batch wrong_batch = as_batch(&wrong);
    kt_step_report untouched = {-1.0f, 7, 7};
    CHECK(kt_trainer_step(trainer, &wrong_batch, &untouched) == KT_ERR_INPUT);
    CHECK(untouched.loss == -1.0f && untouched.steps == 7);
    kt_batch no_labels = batches[0];
    no_labels.labels = NULL;
    CHECK(kt_trainer_step(trainer, &no_labels, &untouched) == KT_ERR_NULL_ARGUMENT);

    /* Get the delta, save it, load it back. */
    kt_delta *delta = NULL, *loaded = NULL;
    OK(kt_trainer_delta(trainer, &delta));
    OK(kt_delta_save(delta, delta_path, KT_PRECISION_F32));
    CHECK(kt_delta_save(delta, delta_path, 9) == KT_ERR_INVALID_ARGUMENT);
    OK(kt_delta_load(base, delta_path, &loaded));
    uint64_t steps = 0;
    OK(kt_delta_steps(loaded, &steps));
    CHECK(steps == 5 * BATCHES);

    /* Sessions: the base alone, with the trained delta, with the reloaded one. */
    const kt_tokens *tokens = &batches[0].tokens;
    kt_session *s_plain = NULL, *s_trained = NULL, *s_loaded = NULL;
    OK(kt_session_new(base, NULL, 1, &s_plain));
    OK(kt_session_new(base, delta, 1, &s_trained));
    OK(kt_session_new(base, loaded, 1, &s_loaded));
    size_t n = first_output(s_plain, tokens, plain, HIDDEN_MAX);
    CHECK(n == ROWS * SEQ * 32); /* last_hidden_state: [8, 6, 32] */
    CHECK(first_output(s_trained, tokens, trained, HIDDEN_MAX) == n);
    CHECK(first_output(s_loaded, tokens, reloaded, HIDDEN_MAX) == n);
    CHECK(same_bits(trained, reloaded, n));
    CHECK(!same_bits(plain, trained, n));

    kt_outputs *outs = NULL;
    OK(kt_session_run(s_plain, tokens, &outs));
    size_t count = 0;
    OK(kt_outputs_count(outs, &count));
    CHECK(count == 1);
    kt_output view;
    OK(kt_outputs_get(outs, 0, &view));
    CHECK(strcmp(view.name, "last_hidden_state") == 0);
    CHECK(view.rank == 3 && view.shape[0] == ROWS && view.shape[1] == SEQ && view.shape[2] == 32);
    CHECK(kt_outputs_get(outs, 1, &view) == KT_ERR_INVALID_ARGUMENT);
    kt_outputs_free(outs);

    /* Bad inputs: a missing array, a batch of nothing. */
    kt_tokens broken = *tokens;
    broken.attention_mask = NULL;
    outs = NULL;
    CHECK(kt_session_run(s_plain, &broken, &outs) == KT_ERR_NULL_ARGUMENT && outs == NULL);
    broken = *tokens;
    broken.rows = 0;
    CHECK(kt_session_run(s_plain, &broken, &outs) == KT_ERR_INPUT && outs == NULL);

    /* Switch users without a new session: the delta, then none again. */
    OK(kt_session_set_delta(s_plain, loaded));
    CHECK(first_output(s_plain, tokens, scratch, HIDDEN_MAX) == n && same_bits(scratch, trained, n));
    OK(kt_session_set_delta(s_plain, NULL));
    CHECK(first_output(s_plain, tokens, scratch, HIDDEN_MAX) == n && same_bits(scratch, plain, n));

    /* A damaged file and another base's delta are refused with their kinds. */
    FILE *f = fopen(bad_path, "wb");
    CHECK(f != NULL);
    if (f) {
        fputs("KTDELTA but not really a delta", f);
        fclose(f);
    }
    kt_delta *bad = NULL;
    CHECK(kt_delta_load(base, bad_path, &bad) == KT_ERR_DELTA_CORRUPT && bad == NULL);
    kt_base *other = NULL;
    OK(kt_base_load(llama, KT_WEIGHTS_AS_SHIPPED, &other));
    CHECK(kt_delta_load(other, delta_path, &bad) == KT_ERR_DELTA_WRONG_BASE && bad == NULL);
    kt_session *s_other = NULL;
    CHECK(kt_session_new(other, delta, 1, &s_other) == KT_ERR_DELTA_WRONG_BASE && s_other == NULL);
    kt_base_free(other);

    /* Handles keep what they need alive: free the base first, then use the session. */
    kt_base_free(base);
    kt_trainer_free(trainer);
    CHECK(first_output(s_loaded, tokens, scratch, HIDDEN_MAX) == n && same_bits(scratch, trained, n));
    kt_session_free(s_plain);
    kt_session_free(s_trained);
    kt_session_free(s_loaded);
    kt_delta_free(delta);
    kt_delta_free(loaded);
    kt_delta_free(NULL);
    kt_session_free(NULL);
    remove(delta_path);
    remove(bad_path);
    return report("journey");
}

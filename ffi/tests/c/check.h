/* Shared by the C tests: a CHECK that counts failures, and the toy task's data. */
#ifndef KT_TEST_CHECK_H
#define KT_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kilotune.h"

static int checks_passed = 0;
static int checks_failed = 0;

#define CHECK(cond)                                                                         \
    do {                                                                                    \
        if (cond) {                                                                         \
            checks_passed++;                                                                \
        } else {                                                                            \
            checks_failed++;                                                                \
            fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, \
                    #cond, kt_last_error_message());                                        \
        }                                                                                   \
    } while (0)

/* A call that must succeed; on failure, report and count it. */
#define OK(call)                                                                           \
    do {                                                                                   \
        kt_status st_ = (call);                                                            \
        if (st_ == KT_OK) {                                                                \
            checks_passed++;                                                               \
        } else {                                                                           \
            checks_failed++;                                                               \
            fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #call,      \
                    kt_status_name(st_), kt_last_error_message());                         \
        }                                                                                  \
    } while (0)

enum { ROWS = 8, SEQ = 6, BATCHES = 4 };

/* The toy task of the Rust trainer tests: random token ids in [1, 127]; a row's class is 1
 * when its first token is 64 or more. The generator is fixed, so every run sees the same data. */
typedef struct {
    int64_t ids[ROWS * SEQ];
    int64_t mask[ROWS * SEQ];
    uint32_t labels[ROWS];
} toy_batch;

static void toy_data(toy_batch *out, int count, uint64_t seed) {
    uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
    for (int b = 0; b < count; b++) {
        for (int i = 0; i < ROWS * SEQ; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            out[b].ids[i] = (int64_t)((s >> 33) % 127) + 1;
            out[b].mask[i] = 1;
        }
        for (int r = 0; r < ROWS; r++) out[b].labels[r] = out[b].ids[r * SEQ] >= 64;
    }
}

static kt_batch as_batch(const toy_batch *t) {
    kt_batch b;
    memset(&b, 0, sizeof b);
    b.tokens.rows = ROWS;
    b.tokens.seq_len = SEQ;
    b.tokens.input_ids = t->ids;
    b.tokens.attention_mask = t->mask;
    b.tokens.token_type_ids = NULL; /* zeros */
    b.labels = t->labels;
    return b;
}

/* LoRA on query and value, alpha = 2 * rank, learning rate 5e-2, one thread: the setting the
 * C tests train with. `static inline` so a test that does not train compiles without warnings. */
static const char *const lora_qv_targets[] = {"query", "value"};

static inline kt_train_config lora_qv_config(uint32_t rank, uint64_t seed) {
    kt_train_config c = kt_train_config_default();
    c.lora_rank = rank;
    c.lora_alpha = 2.0f * (float)rank;
    c.lora_targets = lora_qv_targets;
    c.lora_target_count = 2;
    c.learning_rate = 5e-2f;
    c.seed = seed;
    c.threads = 1;
    return c;
}

/* The first output's values, copied into `dst` (at most `cap`); returns how many, or 0. */
static size_t first_output(kt_session *s, const kt_tokens *tokens, float *dst, size_t cap) {
    kt_outputs *outs = NULL;
    if (kt_session_run(s, tokens, &outs) != KT_OK) return 0;
    kt_output o;
    size_t n = 0;
    if (kt_outputs_get(outs, 0, &o) == KT_OK && o.len <= cap) {
        memcpy(dst, o.data, o.len * sizeof(float));
        n = o.len;
    }
    kt_outputs_free(outs);
    return n;
}

static int report(const char *name) {
    printf("%s: %d passed, %d failed\n", name, checks_passed, checks_failed);
    return checks_failed == 0 ? 0 : 1;
}

#endif

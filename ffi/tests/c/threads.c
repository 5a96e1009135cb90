/* Eight threads share one base; each trains its own LoRA delta with its own trainer, then runs
 * its own session with it. All use the same seed and data, so every thread must reach the same
 * loss and the same outputs, bit for bit, as a lone run. Each thread's last-error message is
 * its own.
 *
 * usage: threads FIXTURES_DIR [SCRATCH_DIR (unused)] */
#include <pthread.h>
#include <stdlib.h>

#include "check.h"

enum { THREADS = 8, EPOCHS = 2, OUT_MAX = ROWS * SEQ * 64 };

static kt_base *shared_base;
static toy_batch data[BATCHES];

typedef struct {
    int index;
    float loss;
    size_t n;
    float out[OUT_MAX];
    int failed;
    char own_error[256];
} worker;

static void *train_and_run(void *arg) {
    worker *w = arg;
    int failed = 0;
#define W_OK(call) failed += (call) != KT_OK
    kt_train_config c = lora_qv_config(4, 11);
    kt_trainer *t = NULL;
    W_OK(kt_trainer_new(shared_base, &c, &t));
    kt_step_report r = {0};
    for (int e = 0; e < EPOCHS; e++)
        for (int b = 0; b < BATCHES; b++) {
            kt_batch batch = as_batch(&data[b]);
            W_OK(kt_trainer_step(t, &batch, &r));
        }
    w->loss = r.loss;
    kt_delta *d = NULL;
    W_OK(kt_trainer_delta(t, &d));
    kt_session *s = NULL;
    W_OK(kt_session_new(shared_base, d, 1, &s));
    kt_batch first = as_batch(&data[0]);
    w->n = first_output(s, &first.tokens, w->out, OUT_MAX);
    failed += w->n == 0;
    /* A failure on this thread leaves a message naming this thread's own file. */
    char path[64];
    snprintf(path, sizeof path, "/nonexistent/thread-%d.ktd", w->index);
    kt_delta *none = NULL;
    failed += kt_delta_load(shared_base, path, &none) != KT_ERR_IO;
    snprintf(w->own_error, sizeof w->own_error, "%s", kt_last_error_message());
    failed += strstr(w->own_error, path) == NULL;
    kt_session_free(s);
    kt_delta_free(d);
    kt_trainer_free(t);
    w->failed = failed;
    return NULL;
}

static worker workers[THREADS];
static worker lone;

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURES_DIR [SCRATCH_DIR (unused)]\n", argv[0]);
        return 2;
    }
    char model[4096];
    snprintf(model, sizeof model, "%s/tiny-bert.dynamo.onnx", argv[1]);
    OK(kt_base_load(model, KT_WEIGHTS_AS_SHIPPED, &shared_base));
    toy_data(data, BATCHES, 4);

    lone.index = -1;
    train_and_run(&lone);
    CHECK(lone.failed == 0);

    pthread_t ids[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i].index = i;
        CHECK(pthread_create(&ids[i], NULL, train_and_run, &workers[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(ids[i], NULL) == 0);
    kt_base_free(shared_base);

    for (int i = 0; i < THREADS; i++) {
        CHECK(workers[i].failed == 0);
        CHECK(memcmp(&workers[i].loss, &lone.loss, sizeof(float)) == 0);
        CHECK(workers[i].n == lone.n && memcmp(workers[i].out, lone.out, lone.n * sizeof(float)) == 0);
    }
    printf("%d threads, final loss %.6f each\n", THREADS, lone.loss);
    return report("threads");
}

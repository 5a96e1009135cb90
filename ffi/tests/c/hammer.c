/* Many threads hammer shared and separate handles for a bounded number of rounds: each round a
 * thread loads its own base (every few rounds) or uses the shared one, trains its own LoRA
 * delta, saves it to its own file and loads it back, runs a session with the shared delta, switches
 * it to its own, runs again, and frees everything; meanwhile every thread also reads the shared
 * delta, the shared base and one shared kt_outputs. A run checks that nothing fails, that the
 * shared outputs never change, and that a thread's switched session gives exactly what a fresh
 * session with the same delta gives. Run under AddressSanitizer, valgrind (memcheck) and
 * ThreadSanitizer by ffi/tests/run.sh.
 *
 * usage: hammer FIXTURES_DIR SCRATCH_DIR [THREADS (16..64, default 16)] [ROUNDS (default 3)] */
#include <pthread.h>
#include <stdlib.h>

#include "check.h"

enum { MAX_THREADS = 64, OUT_MAX = ROWS * SEQ * 64 };

static char model[4096];
static const char *scratch;
static int rounds = 3;
static kt_base *shared_base;
static kt_delta *shared_delta;
static kt_outputs *shared_outputs;
static float shared_expected[OUT_MAX];
static size_t shared_n;
static toy_batch data[BATCHES];

typedef struct {
    int index;
    int failed;
    int runs;
} worker;

/* The shared outputs' first tensor is still what it was at the start. */
static int shared_outputs_unchanged(void) {
    kt_output o;
    if (kt_outputs_get(shared_outputs, 0, &o) != KT_OK || o.len != shared_n) return 0;
    return memcmp(o.data, shared_expected, shared_n * sizeof(float)) == 0;
}

static void *hammer(void *arg) {
    worker *w = arg;
    int failed = 0;
#define W_OK(call) failed += (call) != KT_OK
    static float a[MAX_THREADS][OUT_MAX], b[MAX_THREADS][OUT_MAX];
    char path[4200];
    snprintf(path, sizeof path, "%s/hammer-%d.ktd", scratch, w->index);
    for (int round = 0; round < rounds; round++) {
        /* Every third round on its own base, the others on the shared one. */
        kt_base *own = NULL;
        if ((w->index + round) % 3 == 0) W_OK(kt_base_load(model, KT_WEIGHTS_AS_SHIPPED, &own));
        kt_base *base = own ? own : shared_base;

        kt_train_config c = lora_qv_config(2, (uint64_t)(w->index * 100 + round));
        kt_trainer *t = NULL;
        W_OK(kt_trainer_new(base, &c, &t));
        kt_step_report r = {0};
        kt_batch batch = as_batch(&data[(w->index + round) % BATCHES]);
        W_OK(kt_trainer_step(t, &batch, &r));
        kt_delta *mine = NULL, *loaded = NULL;
        W_OK(kt_trainer_delta(t, &mine));
        W_OK(kt_delta_save(mine, path, round % 2 ? KT_PRECISION_F16 : KT_PRECISION_F32));
        W_OK(kt_delta_load(base, path, &loaded));

        /* A session with the shared delta, switched to this thread's own, and a fresh one with
         * the same delta: the two must agree bit for bit. The shared delta belongs to the shared
         * base's fingerprint, which an own base of the same file has too. */
        kt_session *s = NULL, *fresh = NULL;
        W_OK(kt_session_new(base, shared_delta, 1, &s));
        kt_batch first = as_batch(&data[0]);
        failed += first_output(s, &first.tokens, a[w->index], OUT_MAX) == 0;
        W_OK(kt_session_set_delta(s, loaded));
        size_t n = first_output(s, &first.tokens, a[w->index], OUT_MAX);
        W_OK(kt_session_new(base, loaded, 1, &fresh));
        size_t m = first_output(fresh, &first.tokens, b[w->index], OUT_MAX);
        failed += n == 0 || n != m || memcmp(a[w->index], b[w->index], n * sizeof(float)) != 0;
        failed += !shared_outputs_unchanged();
        uint64_t steps = 0;
        W_OK(kt_delta_steps(shared_delta, &steps));
        uint8_t fp[32];
        W_OK(kt_base_fingerprint(shared_base, fp));
        w->runs += 3;

        /* Free in an order different from creation's: handles keep what they depend on. */
        kt_base_free(own);
        kt_delta_free(mine);
        kt_session_free(s);
        kt_trainer_free(t);
        kt_delta_free(loaded);
        kt_session_free(fresh);
    }
    w->failed = failed;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s FIXTURES_DIR SCRATCH_DIR [THREADS] [ROUNDS]\n", argv[0]);
        return 2;
    }
    snprintf(model, sizeof model, "%s/tiny-bert.dynamo.onnx", argv[1]);
    scratch = argv[2];
    int threads = argc > 3 ? atoi(argv[3]) : 16;
    if (argc > 4) rounds = atoi(argv[4]);
    if (threads < 1 || threads > MAX_THREADS || rounds < 1) {
        fprintf(stderr, "threads must be 1..%d and rounds at least 1\n", MAX_THREADS);
        return 2;
    }
    OK(kt_base_load(model, KT_WEIGHTS_AS_SHIPPED, &shared_base));
    toy_data(data, BATCHES, 9);

    /* The shared delta and outputs every thread reads. */
    kt_train_config c = kt_train_config_default();
    c.threads = 1;
    kt_trainer *t = NULL;
    OK(kt_trainer_new(shared_base, &c, &t));
    kt_step_report r = {0};
    kt_batch batch = as_batch(&data[0]);
    OK(kt_trainer_step(t, &batch, &r));
    OK(kt_trainer_delta(t, &shared_delta));
    kt_trainer_free(t);
    kt_session *s = NULL;
    OK(kt_session_new(shared_base, shared_delta, 1, &s));
    OK(kt_session_run(s, &batch.tokens, &shared_outputs));
    kt_session_free(s);
    kt_output o;
    OK(kt_outputs_get(shared_outputs, 0, &o));
    CHECK(o.len > 0 && o.len <= OUT_MAX);
    if (checks_failed) return report("hammer (setup)");
    shared_n = o.len;
    memcpy(shared_expected, o.data, shared_n * sizeof(float));

    static worker workers[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        workers[i].index = i;
        CHECK(pthread_create(&ids[i], NULL, hammer, &workers[i]) == 0);
    }
    int runs = 0;
    for (int i = 0; i < threads; i++) {
        CHECK(pthread_join(ids[i], NULL) == 0);
        CHECK(workers[i].failed == 0);
        runs += workers[i].runs;
    }
    CHECK(shared_outputs_unchanged());
    kt_outputs_free(shared_outputs);
    kt_delta_free(shared_delta);
    kt_base_free(shared_base);
    printf("%d threads x %d rounds: %d session runs, shared handles unchanged\n", threads, rounds, runs);
    return report("hammer");
}

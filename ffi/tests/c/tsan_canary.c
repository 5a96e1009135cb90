/* A deliberate misuse that ThreadSanitizer must report: two threads use one kt_session at once,
 * one switching its delta while the other runs it, which the header forbids ("not in use by
 * another thread"). ffi/tests/run.sh tsan expects a data race report from this program, so a
 * build without instrumentation, or suppressions that hide our own code, fail the run.
 *
 * usage: tsan_canary FIXTURES_DIR SCRATCH_DIR */
#include <pthread.h>

#include "check.h"

static kt_session *session;
static toy_batch data[BATCHES];

static void *switcher(void *arg) {
    (void)arg;
    for (int i = 0; i < 200; i++) kt_session_set_delta(session, NULL);
    return NULL;
}

static void *runner(void *arg) {
    (void)arg;
    static float out[ROWS * SEQ * 64];
    kt_batch batch = as_batch(&data[0]);
    for (int i = 0; i < 200; i++) first_output(session, &batch.tokens, out, ROWS * SEQ * 64);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s FIXTURES_DIR SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    char model[4096];
    snprintf(model, sizeof model, "%s/tiny-bert.dynamo.onnx", argv[1]);
    kt_base *base = NULL;
    OK(kt_base_load(model, KT_WEIGHTS_AS_SHIPPED, &base));
    OK(kt_session_new(base, NULL, 1, &session));
    toy_data(data, BATCHES, 3);
    pthread_t a, b;
    CHECK(pthread_create(&a, NULL, switcher, NULL) == 0);
    CHECK(pthread_create(&b, NULL, runner, NULL) == 0);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    kt_session_free(session);
    kt_base_free(base);
    return report("tsan_canary");
}

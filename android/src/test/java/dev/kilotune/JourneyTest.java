package dev.kilotune;

import java.io.File;
import java.util.Arrays;

/**
 * The user journey through the Java classes on the host JVM, with the tiny fixture: train a few
 * steps, save the delta, reload it in a new session and get the same outputs; switch deltas;
 * and the failures a caller can act on, as exceptions carrying the C status code. A plain main
 * so it needs nothing beyond a JDK.
 *
 * usage: java -Djava.library.path=DIR dev.kilotune.JourneyTest FIXTURES_DIR SCRATCH_DIR
 */
public final class JourneyTest {
    private static int passed = 0;
    private static int failed = 0;

    private static void check(boolean ok, String what) {
        if (ok) {
            passed++;
        } else {
            failed++;
            System.err.println("FAILED: " + what);
        }
    }

    private interface Body {
        void run();
    }

    /** {@code body} must throw a KilotuneException with {@code status}. */
    private static void expectStatus(int status, String what, Body body) {
        try {
            body.run();
            check(false, what + ": no exception");
        } catch (KilotuneException e) {
            check(e.status() == status, what + ": status " + e.status() + " (" + e.getMessage() + "), expected " + status);
        }
    }

    /** The toy task of the C and Rust tests: class 1 when a row's first token is 64 or more. */
    private static Batch[] toyData(int count, long seed, int rows, int seq) {
        long s = seed * 6364136223846793005L + 1442695040888963407L;
        Batch[] out = new Batch[count];
        for (int b = 0; b < count; b++) {
            long[] ids = new long[rows * seq];
            long[] mask = new long[rows * seq];
            int[] labels = new int[rows];
            for (int i = 0; i < ids.length; i++) {
                s = s * 6364136223846793005L + 1442695040888963407L;
                ids[i] = Long.remainderUnsigned(s >>> 33, 127) + 1;
                mask[i] = 1;
            }
            for (int r = 0; r < rows; r++) labels[r] = ids[r * seq] >= 64 ? 1 : 0;
            out[b] = new Batch(rows, seq, ids, mask, null, labels);
        }
        return out;
    }

    public static void main(String[] args) {
        if (args.length != 2) {
            System.err.println("usage: JourneyTest FIXTURES_DIR SCRATCH_DIR");
            System.exit(2);
        }
        String model = new File(args[0], "tiny-bert.dynamo.onnx").getPath();
        String llama = new File(args[0], "tiny-llama.dynamo.onnx").getPath();
        String deltaPath = new File(args[1], "java-user.ktd").getPath();
        Batch[] data = toyData(4, 1, 8, 6);

        expectStatus(KilotuneException.IO, "a missing model", () -> Base.load("/nonexistent/model.onnx").close());

        try (Base base = Base.load(model)) {
            check(base.fingerprint().length == 32, "a 32-byte fingerprint");
            expectStatus(KilotuneException.CONFIG, "LoRA rank 0",
                    () -> new Trainer(base, new TrainConfig().lora(0, 8f)).close());
            expectStatus(KilotuneException.CONFIG, "a target that matches nothing",
                    () -> new Trainer(base, new TrainConfig().lora(4, 8f, "no_such_module")).close());

            TrainConfig config = new TrainConfig().lora(4, 8f, "query", "value").learningRate(5e-2f).seed(3).threads(1);
            float[] trained;
            float[] plain;
            try (Trainer trainer = new Trainer(base, config)) {
                Trainer.Evaluation before = trainer.evaluate(data);
                Trainer.StepReport last = null;
                for (int epoch = 0; epoch < 5; epoch++) {
                    for (Batch b : data) last = trainer.step(b);
                }
                Trainer.Evaluation after = trainer.evaluate(data);
                check(last != null && last.steps == 20 && last.applied, "20 applied steps");
                check(before.rows == 32 && after.rows == 32, "32 rows evaluated");
                check(after.loss < before.loss * 0.9f, "loss falls: " + before.loss + " -> " + after.loss);
                System.out.printf("loss %.4f -> %.4f, accuracy %.3f -> %.3f%n", before.loss, after.loss, before.accuracy,
                        after.accuracy);

                int[] bad = data[0].labels.clone();
                bad[2] = 5;
                Batch wrong = new Batch(8, 6, data[0].inputIds, data[0].attentionMask, null, bad);
                expectStatus(KilotuneException.INPUT, "a label past the classes", () -> trainer.step(wrong));
                Batch short_ = new Batch(8, 6, new long[3], new long[3], null, data[0].labels);
                expectStatus(KilotuneException.INPUT, "arrays shorter than rows x seqLen", () -> trainer.step(short_));

                try (Delta delta = trainer.delta();
                        Session withDelta = new Session(base, delta, 1);
                        Session none = new Session(base, null, 1)) {
                    delta.save(deltaPath);
                    Output[] out = withDelta.run(data[0]);
                    check(out.length == 1 && out[0].name.equals("last_hidden_state"), "one output, last_hidden_state");
                    check(Arrays.equals(out[0].shape, new long[] {8, 6, 32}), "shape [8, 6, 32]");
                    trained = out[0].data;
                    plain = none.run(data[0])[0].data;
                    check(!Arrays.equals(trained, plain), "the delta changes the outputs");
                }
            }

            // A new session from the reloaded file gives the same outputs, bit for bit.
            try (Delta loaded = Delta.load(base, deltaPath); Session s = new Session(base, loaded, 1)) {
                check(loaded.steps() == 20, "the delta records 20 steps");
                check(Arrays.equals(s.run(data[0])[0].data, trained), "reloaded delta: same outputs");
                s.setDelta(null);
                check(Arrays.equals(s.run(data[0])[0].data, plain), "setDelta(null): the base's outputs");
                s.setDelta(loaded);
                check(Arrays.equals(s.run(data[0])[0].data, trained), "setDelta(loaded): the delta's outputs");
                Session closed = new Session(base, loaded, 1);
                closed.close();
                closed.close();
                try {
                    closed.run(data[0]);
                    check(false, "a closed session refuses to run");
                } catch (IllegalStateException e) {
                    check(true, "a closed session refuses to run");
                }
            }

            try (Base other = Base.load(llama)) {
                expectStatus(KilotuneException.DELTA_WRONG_BASE, "another base's delta", () -> Delta.load(other, deltaPath).close());
            }
            expectStatus(KilotuneException.IO, "a missing delta", () -> Delta.load(base, deltaPath + ".missing").close());
        }
        new File(deltaPath).delete();
        System.out.println("java journey: " + passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}

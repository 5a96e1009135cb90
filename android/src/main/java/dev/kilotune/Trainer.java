package dev.kilotune;

import java.util.Objects;

/**
 * Trains one user's delta on a base. Its methods are synchronized: one call at a time, from any
 * thread. Each thread that trains should have its own trainer; many may share one base.
 */
public final class Trainer extends Handle {
    /** What one step did. */
    public static final class StepReport {
        /** The loss before the update. */
        public final float loss;
        /** False when the update was skipped because a gradient was not finite. */
        public final boolean applied;
        /** Steps taken so far, this one included. */
        public final long steps;

        StepReport(double[] r) {
            loss = (float) r[0];
            applied = r[1] != 0;
            steps = (long) r[2];
        }
    }

    /** Accuracy and mean loss over some batches. */
    public static final class Evaluation {
        /** The fraction of rows classified right. */
        public final float accuracy;
        /** The mean cross-entropy. */
        public final float loss;
        /** Rows seen. */
        public final long rows;

        Evaluation(double[] r) {
            accuracy = (float) r[0];
            loss = (float) r[1];
            rows = (long) r[2];
        }
    }

    /** A trainer for {@code config} on {@code base}. */
    public Trainer(Base base, TrainConfig config) {
        super(create(Objects.requireNonNull(base, "base"), Objects.requireNonNull(config, "config")));
    }

    private static long create(Base base, TrainConfig c) {
        return Native.trainerNew(base.handle(), c.method.ordinal(), c.loraRank, c.loraAlpha, c.loraTargets,
                c.bitfitQueryAndMlpOnly ? 1 : 0, c.bitfitLayerNorm, c.classes, c.clsPooling ? 1 : 0, c.seed,
                c.threads, c.optimizer.ordinal(), c.learningRate, c.weightDecay, c.momentum, c.warmupSteps,
                c.totalSteps, c.decay.ordinal(), c.maxGradNorm);
    }

    /** One optimization step on a labelled batch. */
    public synchronized StepReport step(Batch b) {
        Objects.requireNonNull(b, "batch");
        return new StepReport(Native.trainerStep(handle(), b.rows, b.seqLen, b.inputIds, b.attentionMask,
                b.tokenTypeIds, b.labels()));
    }

    /** Accuracy and loss over labelled batches, without training. */
    public synchronized Evaluation evaluate(Batch... batches) {
        int tokens = 0, labels = 0;
        boolean types = batches.length > 0;
        for (Batch b : batches) {
            tokens += b.inputIds.length;
            labels += b.labels().length;
            types &= b.tokenTypeIds != null;
        }
        int[] rows = new int[batches.length], seqLens = new int[batches.length], allLabels = new int[labels];
        long[] ids = new long[tokens], mask = new long[tokens], typeIds = types ? new long[tokens] : null;
        int t = 0, l = 0;
        for (int i = 0; i < batches.length; i++) {
            Batch b = batches[i];
            rows[i] = b.rows;
            seqLens[i] = b.seqLen;
            System.arraycopy(b.inputIds, 0, ids, t, b.inputIds.length);
            System.arraycopy(b.attentionMask, 0, mask, t, Math.min(b.attentionMask.length, b.inputIds.length));
            if (typeIds != null) System.arraycopy(b.tokenTypeIds, 0, typeIds, t, Math.min(b.tokenTypeIds.length, b.inputIds.length));
            System.arraycopy(b.labels, 0, allLabels, l, b.labels.length);
            t += b.inputIds.length;
            l += b.labels.length;
        }
        return new Evaluation(Native.trainerEvaluate(handle(), rows, seqLens, ids, mask, typeIds, allLabels));
    }

    /** A snapshot of the delta trained so far; the caller closes it. */
    public synchronized Delta delta() {
        return new Delta(Native.trainerDelta(handle()));
    }

    @Override
    void free(long handle) {
        Native.trainerFree(handle);
    }
}

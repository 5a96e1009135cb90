package dev.kilotune;

/**
 * The native methods, implemented in Rust by the kilotune-ffi library built with its {@code jni}
 * feature ({@code libkilotune_ffi.so}). Handles are the addresses of the library's C handles;
 * the public classes own them. Every method throws {@link KilotuneException} on failure.
 */
final class Native {
    static {
        System.loadLibrary("kilotune_ffi");
    }

    private Native() {}

    static native long baseLoad(String path, boolean int8);

    static native long baseLoadBytes(byte[] bytes, boolean int8);

    static native byte[] baseFingerprint(long base);

    static native void baseFree(long base);

    static native long trainerNew(long base, int method, int loraRank, float loraAlpha, String[] loraTargets,
            int bitfitVariant, boolean bitfitLayerNorm, int classes, int pooling, long seed, int threads,
            int optimizer, float learningRate, float weightDecay, float momentum, long warmupSteps, long totalSteps,
            int decay, float maxGradNorm);

    /** Returns {loss, applied (1 or 0), steps}. */
    static native double[] trainerStep(long trainer, int rows, int seqLen, long[] inputIds, long[] attentionMask,
            long[] tokenTypeIds, int[] labels);

    /** Batches concatenated; returns {accuracy, loss, rows}. */
    static native double[] trainerEvaluate(long trainer, int[] rows, int[] seqLens, long[] inputIds,
            long[] attentionMask, long[] tokenTypeIds, int[] labels);

    static native long trainerDelta(long trainer);

    static native void trainerFree(long trainer);

    static native void deltaSave(long delta, String path, int precision);

    static native long deltaLoad(long base, String path);

    static native long deltaSteps(long delta);

    static native void deltaFree(long delta);

    static native long sessionNew(long base, long delta, int threads);

    static native void sessionSetDelta(long session, long delta);

    static native long sessionRun(long session, int rows, int seqLen, long[] inputIds, long[] attentionMask,
            long[] tokenTypeIds);

    static native void sessionFree(long session);

    static native int outputsCount(long outputs);

    static native String outputName(long outputs, int index);

    static native long[] outputShape(long outputs, int index);

    static native float[] outputData(long outputs, int index);

    static native void outputsFree(long outputs);
}

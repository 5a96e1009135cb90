package dev.kilotune;

import java.util.Objects;

/**
 * Runs a base with one user's delta, or none. Its methods are synchronized: one call at a time,
 * from any thread. Switch users with {@link #setDelta} rather than a new session.
 */
public final class Session extends Handle {
    /** A session over {@code base} with {@code delta} (null: the plain base) on {@code threads} threads (0: one per core). */
    public Session(Base base, Delta delta, int threads) {
        super(Native.sessionNew(Objects.requireNonNull(base, "base").handle(), delta == null ? 0 : delta.handle(), threads));
    }

    /** Switches to another user's delta (null: the plain base). */
    public synchronized void setDelta(Delta delta) {
        Native.sessionSetDelta(handle(), delta == null ? 0 : delta.handle());
    }

    /** Runs the model on a batch (its labels are ignored); every output, in the model's order. */
    public synchronized Output[] run(Batch b) {
        Objects.requireNonNull(b, "batch");
        long outs = Native.sessionRun(handle(), b.rows, b.seqLen, b.inputIds, b.attentionMask, b.tokenTypeIds);
        try {
            Output[] result = new Output[Native.outputsCount(outs)];
            for (int i = 0; i < result.length; i++) {
                result[i] = new Output(Native.outputName(outs, i), Native.outputShape(outs, i), Native.outputData(outs, i));
            }
            return result;
        } finally {
            Native.outputsFree(outs);
        }
    }

    @Override
    void free(long handle) {
        Native.sessionFree(handle);
    }
}

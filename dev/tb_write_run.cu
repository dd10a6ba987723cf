// dev/tb_write_run.cu — one run's TensorBoard events written with ldmc/tensorboard.h the way the
// trainers write them, for dev/check_tensorboard_resume.py (which builds and runs it):
//   tb_write_run RUN_DIR START_STEP LAST_STEP EVERY OFFSET
// tb_open(RUN_DIR, START_STEP), then train/loss = step + OFFSET at every step in (START_STEP, LAST_STEP]
// that is a multiple of EVERY, as a trainer resumed from a checkpoint at START_STEP logs them.
#include "ldmc/tensorboard.h"

int main(int argc, char** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: tb_write_run RUN_DIR START_STEP LAST_STEP EVERY OFFSET\n");
        return 2;
    }
    long start = atol(argv[2]), last = atol(argv[3]), every = atol(argv[4]);
    float offset = (float)atof(argv[5]);
    if (every <= 0 || start < 0 || last < start) {
        fprintf(stderr, "Error: need 0 <= START_STEP <= LAST_STEP and EVERY > 0\n");
        return 2;
    }
    TBWriter tb;
    tb_open(&tb, argv[1], start);
    for (long step = start + 1; step <= last; step++) {
        if (step % every == 0) tb_add_scalar(&tb, "train/loss", (float)step + offset, step);
    }
    tb_close(&tb);
    return 0;
}

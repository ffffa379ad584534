/* concurrency: 4 threads share one bundle handle, each with its own generator, and must produce
 * the same greedy tokens as one thread alone.
 *
 *   concurrency BUNDLE PROMPT [MAX_TOKENS] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ferrite.h>

#define THREADS 4
#define ROUNDS 2
#define MAX_IDS 256

typedef struct {
    const ferrite_bundle *bundle;
    const char *prompt;
    unsigned max_tokens;
    uint32_t ids[MAX_IDS];
    size_t n_ids;
    ferrite_status status;
    char message[512];
} job;

static void *run(void *arg) {
    job *j = arg;
    ferrite_generator *gen = NULL;
    ferrite_generate_params params = ferrite_generate_default_params();
    params.max_tokens = j->max_tokens;
    j->status = ferrite_generator_create(j->bundle, NULL, &gen);
    /* Several rounds on the same generator: each generate starts a fresh sequence. */
    for (int round = 0; round < ROUNDS && j->status == FERRITE_OK; round++) {
        j->status = ferrite_generator_generate(gen, j->prompt, &params, NULL, NULL, NULL);
        if (j->status == FERRITE_OK) j->status = ferrite_generator_generated_ids(gen, j->ids, MAX_IDS, &j->n_ids);
    }
    if (j->status != FERRITE_OK) snprintf(j->message, sizeof j->message, "%s", ferrite_last_error());
    ferrite_generator_destroy(&gen);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: concurrency BUNDLE PROMPT [MAX_TOKENS]\n");
        return 2;
    }
    unsigned max_tokens = argc > 3 ? (unsigned)atoi(argv[3]) : 32;
    if (max_tokens > MAX_IDS) max_tokens = MAX_IDS;
    ferrite_bundle *bundle = NULL;
    ferrite_status st = ferrite_bundle_open(argv[1], NULL, &bundle);
    if (st != FERRITE_OK) {
        fprintf(stderr, "concurrency: open: %s: %s\n", ferrite_status_name(st), ferrite_last_error());
        return 1;
    }
    static job single, jobs[THREADS];
    single = (job){.bundle = bundle, .prompt = argv[2], .max_tokens = max_tokens};
    run(&single);
    int rc = 0;
    if (single.status != FERRITE_OK) {
        fprintf(stderr, "concurrency: single thread: %s\n", single.message);
        rc = 1;
    }
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS && rc == 0; t++) {
        jobs[t] = single;
        jobs[t].n_ids = 0;
        if (pthread_create(&threads[t], NULL, run, &jobs[t]) != 0) {
            fprintf(stderr, "concurrency: pthread_create failed\n");
            return 1;
        }
    }
    for (int t = 0; t < THREADS && rc == 0; t++) pthread_join(threads[t], NULL);
    for (int t = 0; t < THREADS && rc == 0; t++) {
        int same = jobs[t].status == FERRITE_OK && jobs[t].n_ids == single.n_ids &&
                   memcmp(jobs[t].ids, single.ids, single.n_ids * sizeof single.ids[0]) == 0;
        printf("thread %d: %zu tokens, %s\n", t, jobs[t].n_ids,
               same ? "same as one thread" : jobs[t].status != FERRITE_OK ? jobs[t].message : "DIFFERENT");
        if (!same) rc = 1;
    }
    ferrite_bundle_destroy(&bundle);
    printf("%s\n", rc == 0 ? "concurrency: ok" : "concurrency: FAILED");
    return rc;
}

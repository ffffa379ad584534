#include <stdio.h>
#include <ferrite.h>

static int print_text(const char *text, size_t len, void *user_data) {
    (void)user_data;
    return fwrite(text, 1, len, stdout) != len; /* non-zero stops generation */
}

int main(int argc, char **argv) {
    if (argc != 3) return fprintf(stderr, "usage: %s BUNDLE PROMPT\n", argv[0]), 2;
    ferrite_bundle *bundle = NULL;
    ferrite_generator *gen = NULL;
    ferrite_status st = ferrite_bundle_open(argv[1], NULL, &bundle); /* tract, hashes checked */
    if (st == FERRITE_OK) st = ferrite_generator_create(bundle, NULL, &gen); /* greedy */
    if (st == FERRITE_OK) st = ferrite_generator_generate(gen, argv[2], NULL, print_text, NULL, NULL);
    if (st != FERRITE_OK) fprintf(stderr, "ferrite: %s\n", ferrite_last_error());
    printf("\n");
    ferrite_generator_destroy(&gen); /* sets gen to NULL */
    ferrite_bundle_destroy(&bundle);
    return st != FERRITE_OK;
}

/*
 * cfs_fuzz.c - libFuzzer + ASan/UBSan harness for cas_cfs_write.
 *
 * The records are produced by cas's own encoder, but the C reads them as if
 * anyone wrote them: every input must be refused or give an image, without a
 * memory error, a leak or undefined behaviour.  Byte 0 picks the version pair;
 * the rest are records (their count is found by trying 1..8).
 *   make fuzz-cfs && ./cfs_fuzz -max_total_time=300 corpus-cfs/
 */
#include "cas_native.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    for (uint32_t count = 1; count <= 8; count++) {
        uint8_t *image = NULL;
        size_t len = 0;
        int rc = cas_cfs_write(data + 1, size - 1, count, data[0] & 1, (data[0] >> 1) & 1,
                               &image, &len);
        if (rc == 0 && (len % 4096 != 0 || len < 4096))
            abort();
        cas_cfs_free(image);
    }
    return 0;
}

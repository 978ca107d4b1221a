#include "hb.h"
const char *hb_prefix(void) { return HB_PREFIX; }

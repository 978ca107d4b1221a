#include <stdio.h>
#include "hb.h"
int main(void) { printf("hello from %s\n", hb_prefix()); return 0; }

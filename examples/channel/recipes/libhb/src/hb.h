const char *hb_prefix(void);

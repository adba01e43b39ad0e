/* SPDX-License-Identifier: MIT */
/*
 * `loyd campaigns`: a tenant's campaigns as the engine sees them, declared by the pack's
 * `campaigns` settings (campaign.h) with the tenant's overrides, with what each has awarded
 * tenant-wide and what its budget still allows, in the pack's points unit, and whether it
 * runs today in the tenant's time zone.  Reads the config, the tenant file, its pack and the
 * store opened read-only (cli_common.h): safe while `loyd serve` runs.
 *
 * Exit codes: 0 listed (maybe none); 1 the config, the pack, the settings or the store cannot
 * be used (the message says which); 2 usage error.
 */
#ifndef LOYD_CLI_CAMPAIGNS_H
#define LOYD_CLI_CAMPAIGNS_H

/** `loyd campaigns [-c FILE] [--date YYYY-MM-DD] [--json] TENANT`; argv[0] is "campaigns". */
int loyd_cmd_campaigns(int argc, char **argv);

#endif

// SPDX-License-Identifier: GPL-3.0-or-later
// sblatency: stembridge's test effect, a 64-sample delay that reports its latency.
#pragma once

#define DISTRHO_PLUGIN_BRAND   "stembridge"
#define DISTRHO_PLUGIN_NAME    "sblatency"
#define DISTRHO_PLUGIN_URI     "urn:stembridge:tests:sblatency"
#define DISTRHO_PLUGIN_CLAP_ID "org.stembridge.tests.sblatency"

#define DISTRHO_PLUGIN_HAS_UI        0
#define DISTRHO_PLUGIN_IS_RT_SAFE    1
#define DISTRHO_PLUGIN_NUM_INPUTS    2
#define DISTRHO_PLUGIN_NUM_OUTPUTS   2
#define DISTRHO_PLUGIN_WANT_PROGRAMS 0
#define DISTRHO_PLUGIN_WANT_STATE    0
#define DISTRHO_PLUGIN_WANT_LATENCY  1
#define DISTRHO_PLUGIN_VST3_CATEGORIES "Fx|Delay"

// SPDX-License-Identifier: GPL-3.0-or-later
// sbgain: stembridge's test effect, a stereo gain with a dry/wet mix.
#pragma once

#define DISTRHO_PLUGIN_BRAND   "stembridge"
#define DISTRHO_PLUGIN_NAME    "sbgain"
#define DISTRHO_PLUGIN_URI     "urn:stembridge:tests:sbgain"
#define DISTRHO_PLUGIN_CLAP_ID "org.stembridge.tests.sbgain"

#define DISTRHO_PLUGIN_HAS_UI        0
#define DISTRHO_PLUGIN_IS_RT_SAFE    1
#define DISTRHO_PLUGIN_NUM_INPUTS    2
#define DISTRHO_PLUGIN_NUM_OUTPUTS   2
#define DISTRHO_PLUGIN_WANT_PROGRAMS 0
#define DISTRHO_PLUGIN_WANT_STATE    0
#define DISTRHO_PLUGIN_WANT_LATENCY  0
#define DISTRHO_PLUGIN_VST3_CATEGORIES "Fx|Tools"

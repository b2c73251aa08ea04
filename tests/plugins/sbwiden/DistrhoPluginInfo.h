// SPDX-License-Identifier: GPL-3.0-or-later
// sbwiden: stembridge's test effect, mono in, stereo out (a layout pedalboard cannot host).
#pragma once

#define DISTRHO_PLUGIN_BRAND   "stembridge"
#define DISTRHO_PLUGIN_NAME    "sbwiden"
#define DISTRHO_PLUGIN_URI     "urn:stembridge:tests:sbwiden"
#define DISTRHO_PLUGIN_CLAP_ID "org.stembridge.tests.sbwiden"

#define DISTRHO_PLUGIN_HAS_UI        0
#define DISTRHO_PLUGIN_IS_RT_SAFE    1
#define DISTRHO_PLUGIN_NUM_INPUTS    1
#define DISTRHO_PLUGIN_NUM_OUTPUTS   2
#define DISTRHO_PLUGIN_WANT_PROGRAMS 0
#define DISTRHO_PLUGIN_WANT_STATE    0
#define DISTRHO_PLUGIN_WANT_LATENCY  0
#define DISTRHO_PLUGIN_VST3_CATEGORIES "Fx|Tools|Stereo"

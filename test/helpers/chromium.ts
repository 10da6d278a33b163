/** The browser CI installs; PAMPA_CHROMIUM points elsewhere on a developer machine. */
export const CHROMIUM = process.env.PAMPA_CHROMIUM ?? '/usr/bin/chromium';
export const CHROMIUM_MISSING = `${CHROMIUM} is not installed (apt-get install -y --no-install-recommends chromium)`;
/** Headless, and no background traffic: this machine's network is closed. */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

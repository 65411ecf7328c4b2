/* ncursesw for flowtop, behind functions Swift can call: the library's
 * attributes, colours and key codes are macros that do not import. */
#ifndef FM_NCURSES_SHIM_H
#define FM_NCURSES_SHIM_H
#define _XOPEN_SOURCE_EXTENDED 1
#include <locale.h>
#include <stdlib.h>
#include <ncursesw/curses.h>

/* Style kinds, as flowtop's screen model names them. */
enum { FM_STYLE_NORMAL = 0, FM_STYLE_HEADER = 1, FM_STYLE_TITLE = 2, FM_STYLE_SELECTED = 3, FM_STYLE_WARNING = 4, FM_STYLE_DIM = 5 };

static int fm_nc_color = 0;

/* Enter curses mode; color 0 honours NO_COLOR (attributes only: bold, reverse). */
static inline void fm_nc_init(int color, int timeout_ms)
{
    setlocale(LC_ALL, "");
    /* The terminal's own size, not a LINES/COLUMNS left in the environment
     * (shells and test runners export stale ones; KEY_RESIZE keeps it right). */
    unsetenv("LINES");
    unsetenv("COLUMNS");
    initscr();
    /* Esc is a key here (back, cancel), not the start of a sequence to wait
     * a second for. */
    set_escdelay(25);
    cbreak();
    noecho();
    keypad(stdscr, TRUE);
    timeout(timeout_ms);
    curs_set(0);
    fm_nc_color = color && has_colors();
    if (fm_nc_color) {
        start_color();
        use_default_colors();
        init_pair(1, COLOR_CYAN, -1);
        init_pair(2, COLOR_GREEN, -1);
        init_pair(3, COLOR_BLACK, COLOR_CYAN);
        init_pair(4, COLOR_RED, -1);
    }
}

static inline void fm_nc_end(void) { if (!isendwin()) endwin(); }
static inline int fm_nc_height(void) { return LINES; }
static inline int fm_nc_width(void) { return COLS; }
static inline void fm_nc_erase(void) { erase(); }
static inline void fm_nc_refresh(void) { refresh(); }
static inline int fm_nc_getch(void) { return getch(); }

/* Write UTF-8 text at (y, x) in a style. */
static inline void fm_nc_put(int y, int x, const char *text, int style)
{
    attr_t a = A_NORMAL;
    short pair = 0;
    switch (style) {
    case FM_STYLE_HEADER: a = A_BOLD; pair = 1; break;
    case FM_STYLE_TITLE: a = A_BOLD; pair = 2; break;
    case FM_STYLE_SELECTED: a = A_REVERSE; pair = 3; break;
    case FM_STYLE_WARNING: a = A_BOLD; pair = 4; break;
    case FM_STYLE_DIM: a = A_DIM; break;
    default: break;
    }
    if (!fm_nc_color) pair = 0;
    attr_set(a, pair, NULL);
    mvaddstr(y, x, text);
    attr_set(A_NORMAL, 0, NULL);
}

static inline int fm_key_up(void) { return KEY_UP; }
static inline int fm_key_down(void) { return KEY_DOWN; }
static inline int fm_key_npage(void) { return KEY_NPAGE; }
static inline int fm_key_ppage(void) { return KEY_PPAGE; }
static inline int fm_key_home(void) { return KEY_HOME; }
static inline int fm_key_end(void) { return KEY_END; }
static inline int fm_key_resize(void) { return KEY_RESIZE; }
static inline int fm_key_backspace(void) { return KEY_BACKSPACE; }
static inline int fm_key_enter(void) { return KEY_ENTER; }
static inline int fm_key_btab(void) { return KEY_BTAB; }
#endif

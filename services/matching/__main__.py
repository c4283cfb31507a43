from libs.common.bus import run_service
from services.matching.app import create_service
from services.matching.settings import MatchingSettings

settings = MatchingSettings()
run_service(lambda: create_service(settings), settings)
